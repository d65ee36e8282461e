"""Limits and cleanup: max_connections, connection_timeout, enable_sse, disconnects and slow subscribers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import httpx
import pytest

from ssehub.testing import open_stream
from tests.conftest import ServerFactory
from tests.helpers import health, publish, wait_for_connections

pytestmark = pytest.mark.anyio


async def test_max_connections_answers_503_json(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """Past max_connections a stream is refused with 503, Retry-After and a JSON body; a slot frees on leave."""
    server = start_server(max_connections=2)
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(2):
            stream = await stack.enter_async_context(open_stream(client, f"{server.api}/stream"))
            await stream.next_event()
        refused = await client.get(f"{server.api}/stream")
        assert refused.status_code == 503
        assert refused.headers["retry-after"].isdigit()
        assert refused.headers["content-type"] == "application/json"
        assert refused.json()["code"] == "MAX_CONNECTIONS"
        assert (await health(client, server))["active_connections"] == 2
    await wait_for_connections(client, server, 0)
    async with open_stream(client, f"{server.api}/stream") as stream:
        assert stream.response.status_code == 200


async def test_disabled_sse_answers_503(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """enable_sse=false refuses streams with 503 SSE_DISABLED; health says so."""
    server = start_server(enable_sse=False)
    response = await client.get(f"{server.api}/stream")
    assert response.status_code == 503
    assert response.json()["code"] == "SSE_DISABLED"
    assert (await health(client, server))["enabled"] is False


async def test_connection_timeout_ends_cleanly_and_resume_loses_nothing(
    start_server: ServerFactory, client: httpx.AsyncClient
) -> None:
    """A stream older than connection_timeout ends cleanly; reconnecting with its last id loses nothing."""
    server = start_server(connection_timeout=0.6, heartbeat_interval=0.5)
    url = f"{server.api}/stream?channels=a:1"
    async with open_stream(client, url) as stream:
        await stream.next_event()
        first = await publish(client, server, "a:1", "e", 1)
        events = await stream.wait_end(timeout=3)
    assert stream.ended
    last_id = [m for m in events if m.event != "heartbeat"][-1].id
    assert last_id == first
    missed = await publish(client, server, "a:1", "e", 2)
    async with open_stream(client, url, headers={"Last-Event-ID": last_id}) as stream:
        await stream.next_event()
        assert (await stream.next_event()).id == missed
    await wait_for_connections(client, server, 0)


async def test_health_counts_return_to_zero_after_disconnects(
    start_server: ServerFactory, client: httpx.AsyncClient
) -> None:
    """Clients that go away are noticed promptly and every count they held is released."""
    server = start_server()
    async with contextlib.AsyncExitStack() as stack:
        for n in range(10):
            stream = await stack.enter_async_context(
                open_stream(client, f"{server.api}/stream?channels=job:{n % 3},system:notifications&download_id={n}")
            )
            await stream.next_event()
        status = await health(client, server)
        assert status["active_connections"] == 10
        assert status["channels"] == {"job:0": 4, "job:1": 3, "job:2": 3, "system:notifications": 10}
    # Idle streams (no event, no heartbeat due): the disconnect itself must be noticed.
    await wait_for_connections(client, server, 0, timeout=3)
    assert (await health(client, server))["channels"] == {}


async def test_raw_socket_disconnect_is_noticed(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """A client that closes its socket mid-stream is released without waiting for a write to fail."""
    server = start_server()
    host, port = server.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {server.api.removeprefix(server.base_url)}/stream HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    assert b"200 OK" in await asyncio.wait_for(reader.read(4096), 2)
    await wait_for_connections(client, server, 1)
    writer.close()
    await writer.wait_closed()
    await wait_for_connections(client, server, 0, timeout=3)


async def test_slow_subscriber_is_disconnected_without_hurting_others(
    start_server: ServerFactory, client: httpx.AsyncClient
) -> None:
    """A subscriber that stops reading is cut off at its buffer bound; a reading one gets every event."""
    server = start_server(max_buffer_bytes=64 * 1024)
    host, port = server.base_url.removeprefix("http://").split(":")
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    slow.connect((host, int(port)))
    slow.sendall(
        f"GET {server.api.removeprefix(server.base_url)}/stream?channels=big:1 HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    payload = "x" * 30000
    try:
        async with open_stream(client, f"{server.api}/stream?channels=big:1", timeout=10) as fast:
            await fast.next_event()
            await wait_for_connections(client, server, 2)
            sent = []
            deadline = asyncio.get_running_loop().time() + 15
            for n in range(1000):  # bounded in count (~30 MB, far beyond socket buffers) and in time
                sent.append(await publish(client, server, "big:1", "blob", {"n": n, "p": payload}))
                assert [m.id for m in await fast.take(1)] == sent[-1:]
                if (await health(client, server))["active_connections"] == 1:
                    break
                if asyncio.get_running_loop().time() > deadline:
                    pytest.fail("the slow subscriber was not disconnected within 15 s")
            else:
                pytest.fail("the slow subscriber was never disconnected")
            # The fast subscriber still works after the slow one was cut.
            after = await publish(client, server, "big:1", "blob", {"n": "after"})
            assert (await fast.next_event()).id == after
    finally:
        slow.close()
    await wait_for_connections(client, server, 0)


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("channels=bad%20channel", 422, "INVALID_CHANNEL"),
        ("channels=a,b%0Aevent:x", 422, "INVALID_CHANNEL"),
        ("channels=", 422, "INVALID_CHANNEL"),
        ("channels=" + ",".join(f"c:{n}" for n in range(33)), 422, "TOO_MANY_CHANNELS"),
        ("channels=a:1&bad-name=1", 422, "INVALID_FILTER"),
        ("channels=a:1&x=1&x=2", 422, "INVALID_FILTER"),
        ("channels=a:1&x=" + "v" * 300, 422, "INVALID_FILTER"),
    ],
)
async def test_bad_stream_requests(
    start_server: ServerFactory, client: httpx.AsyncClient, query: str, status: int, code: str
) -> None:
    """Bad stream requests get a 4xx JSON answer naming the problem, never a 200 or a 500."""
    server = start_server()
    response = await client.get(f"{server.api}/stream?{query}")
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert response.json()["error"]
    assert (await health(client, server))["active_connections"] == 0


async def test_unknown_channel_answers_404(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """With SSEHUB_CHANNELS patterns, other channels are unknown: 404 for streams and publishes."""
    server = start_server(channels=["download:*", "queue:updates"])
    response = await client.get(f"{server.api}/stream?channels=download:updates,secret:1")
    assert response.status_code == 404
    assert response.json()["code"] == "UNKNOWN_CHANNEL"
    assert "secret:1" in response.json()["error"]
    response = await client.post(f"{server.api}/publish", json={"channel": "queue:other", "event": "e", "data": 1})
    assert response.status_code == 404
    await publish(client, server, "download:42", "download_progress", {})
    # The default channels include system:notifications, which these patterns do not allow.
    assert (await client.get(f"{server.api}/stream")).status_code == 404


async def test_bad_download_id(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """A download id outside the documented alphabet is refused with 422."""
    server = start_server()
    for bad in ("a%20b", "x*y", "%C3%BC", "v" * 129):
        response = await client.get(f"{server.api}/downloads/{bad}")
        assert response.status_code == 422, bad
        assert response.json()["code"] == "INVALID_FILTER"


async def test_unknown_path_and_method_are_json(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """Unknown paths and wrong methods answer in the same JSON shape."""
    server = start_server()
    missing = await client.get(f"{server.api}/nope")
    assert (missing.status_code, missing.json()["code"]) == (404, "NOT_FOUND")
    wrong = await client.post(f"{server.api}/stream")
    assert (wrong.status_code, wrong.json()["code"]) == (405, "METHOD_NOT_ALLOWED")
    assert json.loads((await client.get(f"{server.api}/publish")).text)["code"] == "METHOD_NOT_ALLOWED"
