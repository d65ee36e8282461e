"""Streams that ``ssehub serve`` answers itself on uvicorn's connection (``NativeStreams`` in ssehub/_uvicorn.py).

The stream scenarios of the other test files run on this path too (the ``native`` writer); these tests pin what
is particular to it: which requests it takes, that a connection goes on after a native answer (keep-alive and
pipelining), and that a live stream holds no task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from ssehub import Hub, create_app
from ssehub.guard import uvicorn_options
from ssehub.testing import running_server
from tests.conftest import Server, make_settings
from tests.helpers import health
from tests.helpers import wait_for_connections as wait_via_health
from tests.rawhttp import address, api_path, parse_response

pytestmark = pytest.mark.anyio


@contextlib.contextmanager
def native_server(**overrides: Any) -> Iterator[Server]:
    """The standalone app under ``ssehub serve``'s uvicorn options (native streams on)."""
    settings = make_settings(**overrides)
    hub = Hub(settings)
    with running_server(create_app(hub=hub), **uvicorn_options(settings)) as base_url:
        yield Server(base_url, base_url + settings.prefix, hub)


@contextlib.asynccontextmanager
async def raw_connection(server: Server) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(*address(server))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status and headers of the next response on the connection."""
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status, headers, _ = parse_response(raw)
    return status, headers


async def read_chunked_body(reader: asyncio.StreamReader) -> bytes:
    """A chunked body up to its last chunk."""
    body = b""
    while True:
        size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)).strip(), 16)
        data = await asyncio.wait_for(reader.readexactly(size + 2), 10)
        if size == 0:
            return body
        body += data[:-2]


async def wait_for_connections(server: Server, count: int) -> list[Any]:
    """Wait until the hub serves ``count`` streams; return its connections."""
    async with httpx.AsyncClient(timeout=5) as client:
        await wait_via_health(client, server, count)
    return list(server.hub._connections)


def get(path: str, *extra: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: test", *extra]) + "\r\n\r\n").encode()


async def test_a_connection_serves_requests_after_a_native_stream_ended() -> None:
    """A stream ended by the hub finishes its chunked response, and the same connection then answers health."""
    with native_server(connection_timeout=1.0, heartbeat_interval=0.5) as server:
        async with raw_connection(server) as (reader, writer):
            writer.write(get(f"{api_path(server)}/stream?channels=a"))
            status, headers = await read_head(reader)
            assert (status, headers["transfer-encoding"]) == (200, "chunked")
            assert "connection" not in headers
            body = await read_chunked_body(reader)  # ends after connection_timeout
            assert b"event: connected" in body
            writer.write(get(f"{api_path(server)}/health"))
            status, headers = await read_head(reader)
            assert status == 200
            assert json.loads(await reader.readexactly(int(headers["content-length"])))["status"] == "ok"
        await wait_for_connections(server, 0)


async def test_a_refusal_keeps_the_connection_and_a_pipelined_request_follows_a_stream() -> None:
    """A refused stream answers JSON and keeps the connection; a request pipelined behind a stream is answered
    once that stream ends."""
    with native_server(connection_timeout=1.0, heartbeat_interval=0.5) as server:
        async with raw_connection(server) as (reader, writer):
            writer.write(get(f"{api_path(server)}/stream?channels=bad%20name"))
            status, headers = await read_head(reader)
            body = json.loads(await reader.readexactly(int(headers["content-length"])))
            assert (status, body["code"]) == (422, "INVALID_CHANNEL")
            writer.write(get(f"{api_path(server)}/stream?channels=a") + get(f"{api_path(server)}/health"))
            assert (await read_head(reader))[0] == 200
            await read_chunked_body(reader)
            status, headers = await read_head(reader)
            assert status == 200
            assert json.loads(await reader.readexactly(int(headers["content-length"])))["status"] == "ok"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET {path} HTTP/1.0\r\nHost: test\r\n\r\n",
        b"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        b"GET {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\n\r\n{}",
    ],
    ids=["http-1.0", "connection-close", "with-body"],
)
async def test_requests_the_native_path_does_not_take_are_streamed_by_uvicorns_cycle(request_bytes: bytes) -> None:
    """HTTP/1.0, a request that closes the connection, or a GET with a body go through uvicorn's request cycle."""
    with native_server() as server:
        async with raw_connection(server) as (reader, writer):
            writer.write(request_bytes.replace(b"{path}", f"{api_path(server)}/stream?channels=a".encode()))
            assert (await read_head(reader))[0] == 200
            [connection] = await wait_for_connections(server, 1)
            assert connection.writer in ("direct", "portable")  # HTTP/1.0 is not chunked: the portable writer
            assert connection.writer != "native"


async def test_live_native_streams_hold_no_task() -> None:
    """Once open and caught up, a native stream has no task of its own: many streams add no tasks."""
    with native_server() as server:
        loop_tasks: list[int] = []

        async def count_tasks() -> None:
            loop_tasks.append(len(asyncio.all_tasks()))

        def tasks_in_server() -> int:
            loop_tasks.clear()
            loop = next(iter(server.hub._tasks)).get_loop()  # the server thread's loop
            future = asyncio.run_coroutine_threadsafe(count_tasks(), loop)
            future.result(5)
            return loop_tasks[0]

        before = tasks_in_server()
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(20):
                reader, writer = await stack.enter_async_context(raw_connection(server))
                writer.write(get(f"{api_path(server)}/stream?channels=a"))
                assert (await read_head(reader))[0] == 200
            await wait_for_connections(server, 20)
            assert tasks_in_server() <= before + 1  # + the counting task itself
        await wait_for_connections(server, 0)


async def test_a_stream_with_a_request_pipelined_behind_it_is_released_when_the_client_leaves() -> None:
    """uvicorn reports a disconnect to the newest request only; the stream ahead of it still ends on its next write."""
    with native_server() as server:
        async with raw_connection(server) as (reader, writer):
            writer.write(get(f"{api_path(server)}/stream?channels=a") + get(f"{api_path(server)}/health"))
            assert (await read_head(reader))[0] == 200
            await wait_for_connections(server, 1)
        # The server reads nothing more from that connection (the pipelined request paused reading), so it learns
        # of the close from a failed write: publish until the stream is gone (bounded).
        async with httpx.AsyncClient(timeout=5) as client:
            for n in range(50):
                response = await client.post(f"{server.api}/publish", json={"channel": "a", "event": "e", "data": n})
                assert response.status_code == 201
                if (await health(client, server))["active_connections"] == 0:
                    break
                await asyncio.sleep(0.1)
        await wait_for_connections(server, 0)
