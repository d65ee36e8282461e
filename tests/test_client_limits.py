"""Per-client limits against a real server: streams per address and identity, publish rate, trusted proxies,
slow and oversized requests (body timeout, 413 drain, head timeout)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time

import httpx
import pytest
from pydantic import ValidationError

from ssehub import create_app
from ssehub.exceptions import LimitExceededError
from ssehub.guard import trusted_proxy_networks, uvicorn_options
from ssehub.limits import RateLimiter, StreamLimits
from ssehub.testing import open_stream
from tests.conftest import Server, ServerFactory, make_settings
from tests.helpers import health, publish, wait_for_connections
from tests.rawhttp import address, api_path, parse_response, raw_exchange, read_to_eof, send_then_read

pytestmark = pytest.mark.anyio


async def assert_healthy(client: httpx.AsyncClient, server: Server, connections: int = 0) -> None:
    """The hub answers /health 200, holds ``connections`` streams, and a normal stream still works."""
    await wait_for_connections(client, server, connections)
    response = await client.get(f"{server.api}/health")
    assert response.status_code == 200
    async with open_stream(client, f"{server.api}/stream?channels=ok:1") as stream:
        assert stream.response.status_code == 200
        assert (await stream.next_event()).event == "connected"
    await wait_for_connections(client, server, connections)


def publish_request(server: Server, body: bytes, extra: str = "") -> bytes:
    """A raw POST /publish with ``body`` and a Content-Length."""
    return (
        f"POST {api_path(server)}/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


# -- streams per client address ----------------------------------------------------------------------------


async def test_streams_per_client_are_limited_and_released(
    start_server: ServerFactory, client: httpx.AsyncClient
) -> None:
    """Past max_streams_per_client a stream gets 429 TOO_MANY_STREAMS with Retry-After; ending one frees a slot."""
    server = start_server(max_streams_per_client=2)
    async with contextlib.AsyncExitStack() as stack:
        for n in range(2):
            stream = await stack.enter_async_context(open_stream(client, f"{server.api}/queue?_={n}"))
            await stream.next_event()
        refused = await client.get(f"{server.api}/downloads/7")
        assert refused.status_code == 429
        assert refused.json()["code"] == "TOO_MANY_STREAMS"
        assert int(refused.headers["retry-after"]) > 0
        assert refused.headers["content-type"] == "application/json"
        assert (await health(client, server))["active_connections"] == 2
    await wait_for_connections(client, server, 0)
    assert server.hub is not None
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(2):
            stream = await stack.enter_async_context(open_stream(client, f"{server.api}/stream"))
            assert stream.response.status_code == 200


async def test_refused_stream_open_releases_its_count(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """A stream the hub refuses after the count was taken (503 MAX_CONNECTIONS) gives its count back."""
    server = start_server(max_streams_per_client=3, max_connections=1)
    async with open_stream(client, f"{server.api}/stream") as stream:
        await stream.next_event()
        for _ in range(5):
            response = await client.get(f"{server.api}/stream")
            assert response.json()["code"] == "MAX_CONNECTIONS"
    await assert_healthy(client, server)
    async with contextlib.AsyncExitStack() as stack:
        stream = await stack.enter_async_context(open_stream(client, f"{server.api}/stream"))
        assert stream.response.status_code == 200


def test_stream_limits_count_per_identity() -> None:
    """Identities are counted apart from addresses; a lease released twice gives back one count."""
    limits = StreamLimits(per_client=10, per_identity=2)
    first = limits.acquire("10.0.0.1", "alice")
    limits.acquire("10.0.0.2", "alice")
    with pytest.raises(LimitExceededError) as refused:
        limits.acquire("10.0.0.3", "alice")
    assert (refused.value.status, refused.value.code) == (429, "TOO_MANY_STREAMS")
    assert limits.open_streams(client="10.0.0.3") == 0  # nothing counted for a refusal
    limits.acquire("10.0.0.3", "bob")
    first.release()
    first.release()
    assert limits.open_streams(identity="alice") == 1
    limits.acquire("10.0.0.1", "alice")
    anonymous = [limits.acquire(None) for _ in range(20)]  # address unknown (a Unix socket): not counted
    assert limits.tracked == 5  # three addresses, two identities: the anonymous ones left no entry
    for lease in anonymous:
        lease.release()
    unlimited = StreamLimits(per_client=0, per_identity=0)
    leases = [unlimited.acquire("a", "b") for _ in range(50)]
    for lease in leases:
        lease.release()
    assert unlimited.tracked == 0


# -- publish rate ------------------------------------------------------------------------------------------


async def test_publish_rate_is_limited_per_client(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """Past the burst, publishing answers 429 RATE_LIMITED with Retry-After; nothing refused was published."""
    server = start_server(publish_rate=0.5, publish_burst=3)
    async with open_stream(client, f"{server.api}/stream?channels=r:1") as stream:
        await stream.next_event()
        ids = [await publish(client, server, "r:1", "e", n) for n in range(3)]
        refused = await client.post(f"{server.api}/publish", json={"channel": "r:1", "event": "e", "data": 99})
        assert refused.status_code == 429
        assert refused.json()["code"] == "RATE_LIMITED"
        assert int(refused.headers["retry-after"]) >= 1
        assert [m.id for m in await stream.take(3)] == ids
        with pytest.raises(TimeoutError):
            await stream.next_event(timeout=0.3)
    await assert_healthy(client, server)


def test_token_bucket_refills_and_forgets_old_keys() -> None:
    """A bucket refills at the rate, keys are independent, and at most max_keys buckets are kept."""
    now = [0.0]
    limiter = RateLimiter(2.0, 2, max_keys=3, clock=lambda: now[0])
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(LimitExceededError) as refused:
        limiter.check("a")
    assert refused.value.retry_after == 1
    limiter.check("b")
    now[0] = 0.5
    limiter.check("a")  # one token back after half a second at 2/s
    for key in ("c", "d", "e"):
        limiter.check(key)
    assert len(limiter) == 3
    RateLimiter(0, 1).check("anything")  # rate 0: no limit
    for _ in range(5):
        limiter.check(None)  # nothing known to count against


# -- trusted proxies ---------------------------------------------------------------------------------------


async def test_forwarded_for_counts_only_from_trusted_proxies(
    start_server: ServerFactory, client: httpx.AsyncClient
) -> None:
    """Behind a trusted proxy each X-Forwarded-For client has its own quota, and the rightmost untrusted hop wins."""
    server = start_server(max_streams_per_client=1, trusted_proxies=["127.0.0.1", "10.0.0.0/8"])
    async with contextlib.AsyncExitStack() as stack:
        for forwarded in ("203.0.113.7", "198.51.100.1", "192.0.2.9, 10.1.2.3"):
            stream = await stack.enter_async_context(
                open_stream(client, f"{server.api}/stream", headers={"X-Forwarded-For": forwarded})
            )
            assert stream.response.status_code == 200, forwarded
        # A client cannot escape its quota by prepending a forged address: the rightmost untrusted hop counts.
        forged = await client.get(f"{server.api}/stream", headers={"X-Forwarded-For": "1.1.1.1, 203.0.113.7"})
        assert forged.status_code == 429
        again = await client.get(f"{server.api}/stream", headers={"X-Forwarded-For": "192.0.2.9"})
        assert again.status_code == 429
    await wait_for_connections(client, server, 0)


async def test_forwarded_for_is_ignored_without_trusted_proxies(
    start_server: ServerFactory, client: httpx.AsyncClient
) -> None:
    """With no trusted proxy, X-Forwarded-For changes nothing: all requests count for the peer's address."""
    server = start_server(max_streams_per_client=1, trusted_proxies="")
    async with open_stream(client, f"{server.api}/stream", headers={"X-Forwarded-For": "203.0.113.7"}) as stream:
        assert stream.response.status_code == 200
        other = await client.get(f"{server.api}/stream", headers={"X-Forwarded-For": "198.51.100.1"})
        assert other.status_code == 429
    await wait_for_connections(client, server, 0)


def test_trusted_proxies_setting_is_one_rule_for_uvicorn() -> None:
    """The setting is validated once and becomes uvicorn's forwarded_allow_ips; empty turns proxy headers off."""
    settings = make_settings(trusted_proxies="10.0.0.1/8, ::1")
    assert trusted_proxy_networks(settings) == ["10.0.0.0/8", "::1/128"]
    options = uvicorn_options(settings)
    assert options["proxy_headers"] is True
    assert options["forwarded_allow_ips"] == ["10.0.0.0/8", "::1/128"]
    assert uvicorn_options(make_settings(trusted_proxies=""))["proxy_headers"] is False
    with pytest.raises(ValidationError, match="trusted_proxies"):
        make_settings(trusted_proxies="10.0.0.1, proxy.internal")


# -- request bodies ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep_alive", [True, False], ids=["keep-alive", "connection-close"])
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_oversized_body_from_a_client_that_does_not_read_gets_413(
    start_server: ServerFactory, client: httpx.AsyncClient, declared: bool, keep_alive: bool
) -> None:
    """A client that sends a whole oversized body (MBs, past socket buffers) before reading can send all of it
    and then reads the 413 JSON, not a reset; a kept-alive connection stays usable."""
    server = start_server(max_payload_bytes=1024, max_drain_bytes=8 << 20)
    body = b'{"channel": "a:1", "event": "e", "data": "' + b"x" * 3_000_000 + b'"}'
    head = f"POST {api_path(server)}/publish HTTP/1.1\r\nHost: x\r\n" + ("" if keep_alive else "Connection: close\r\n")
    if declared:
        request = f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    else:
        parts = (body[:1_500_000], body[1_500_000:])
        chunked = b"".join(b"%x\r\n%b\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"
        request = f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + chunked
    if keep_alive:
        # Then /health on the same connection: the drained body left the connection usable.
        request += f"GET {api_path(server)}/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    sent_all, raw = await send_then_read(server, request, chunks=60)
    assert sent_all, "the server reset the connection while the client was still sending"
    status, _, answer = parse_response(raw)
    assert status == 413
    assert json.loads(answer)["code"] == "PAYLOAD_TOO_LARGE"
    if keep_alive:
        assert raw.count(b"HTTP/1.1 ") == 2
        assert b"HTTP/1.1 200 OK" in raw
    await assert_healthy(client, server)


async def test_body_beyond_the_drain_bound_is_refused_and_closed(
    start_server: ServerFactory, client: httpx.AsyncClient
) -> None:
    """A declared body beyond max_drain_bytes is refused at once with 413 and Connection: close."""
    server = start_server(max_payload_bytes=1024, max_drain_bytes=4096)
    reader, writer = await asyncio.open_connection(*address(server))
    try:
        head = f"POST {api_path(server)}/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n"
        writer.write(head.encode() + b"x" * 1000)
        await writer.drain()
        raw = await read_to_eof(reader)
    finally:
        writer.close()
    status, headers, answer = parse_response(raw)
    assert (status, json.loads(answer)["code"]) == (413, "PAYLOAD_TOO_LARGE")
    assert headers["connection"] == "close"
    await assert_healthy(client, server)


async def test_expect_continue_oversized_is_refused_without_reading(
    start_server: ServerFactory, client: httpx.AsyncClient
) -> None:
    """A client waiting for 100 Continue with an oversized Content-Length gets 413 at once and no 100."""
    server = start_server(max_payload_bytes=1024)
    reader, writer = await asyncio.open_connection(*address(server))
    try:
        head = f"POST {api_path(server)}/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
        writer.write(head.encode() + b"Expect: 100-continue\r\n\r\n")
        await writer.drain()
        raw = await read_to_eof(reader)
    finally:
        writer.close()
    assert not raw.startswith(b"HTTP/1.1 100")
    status, headers, answer = parse_response(raw)
    assert (status, json.loads(answer)["code"]) == (413, "PAYLOAD_TOO_LARGE")
    assert headers["connection"] == "close"
    await assert_healthy(client, server)


async def test_slow_body_times_out_with_408(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """A publish body that stops arriving is answered 408 REQUEST_TIMEOUT after body_timeout, and closed."""
    server = start_server(body_timeout=0.5)
    reader, writer = await asyncio.open_connection(*address(server))
    started = time.monotonic()
    try:
        writer.write(publish_request(server, b'{"channel": "a:1", "event": "e", "data": 1}')[:-10])
        await writer.drain()
        raw = await read_to_eof(reader)  # the answer, then the server closes
    finally:
        writer.close()
    status, headers, answer = parse_response(raw)
    assert (status, json.loads(answer)["code"]) == (408, "REQUEST_TIMEOUT")
    assert headers["connection"] == "close"
    assert time.monotonic() - started >= 0.4
    await assert_healthy(client, server)


# -- request heads (the guarded uvicorn protocol) ----------------------------------------------------------


async def test_slow_headers_are_cut_with_408(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """A client that dribbles its headers (slow-loris) gets 408 REQUEST_TIMEOUT when header_timeout passes."""
    server = start_server(header_timeout=1.0)
    reader, writer = await asyncio.open_connection(*address(server))
    started = time.monotonic()
    answer = b""
    try:
        writer.write(f"GET {api_path(server)}/health HTTP/1.1\r\nHost: x\r\n".encode())
        for n in range(80):  # bounded: one header line every 0.1 s, for at most 8 s
            try:
                writer.write(f"X-Slow-{n}: 1\r\n".encode())
                await writer.drain()
            except ConnectionError:
                break
            with contextlib.suppress(TimeoutError):
                answer += await asyncio.wait_for(reader.read(65536), 0.1)
            if answer:
                break
        with contextlib.suppress(TimeoutError, ConnectionError):
            while piece := await asyncio.wait_for(reader.read(65536), 3):
                answer += piece
    finally:
        writer.close()
    elapsed = time.monotonic() - started
    status, headers, body = parse_response(answer)
    assert (status, json.loads(body)["code"]) == (408, "REQUEST_TIMEOUT")
    assert headers["connection"] == "close"
    assert 0.9 <= elapsed < 10  # never before the timeout; the upper bound only catches "never"
    await assert_healthy(client, server)


async def test_stalled_head_of_a_kept_alive_request_is_cut_with_408(
    start_server: ServerFactory, client: httpx.AsyncClient
) -> None:
    """On a kept-alive connection, a later request whose head stops halfway gets 408 REQUEST_TIMEOUT too."""
    server = start_server(header_timeout=0.5)
    reader, writer = await asyncio.open_connection(*address(server))
    try:
        writer.write(f"GET {api_path(server)}/health HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            _status, first_headers, _ = parse_response(head)
            await reader.readexactly(int(first_headers["content-length"]))
        writer.write(f"GET {api_path(server)}/health HTTP/1.1\r\nHost: x\r\nX-Half".encode())
        answer = await read_to_eof(reader, 5)
    finally:
        writer.close()
    status, headers, body = parse_response(answer)
    assert (status, json.loads(body)["code"]) == (408, "REQUEST_TIMEOUT")
    assert headers["connection"] == "close"
    await assert_healthy(client, server)


async def test_silent_connection_is_closed(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """A connection that never sends a byte is closed without an answer after header_timeout."""
    server = start_server(header_timeout=0.5)
    reader, writer = await asyncio.open_connection(*address(server))
    try:
        assert await asyncio.wait_for(reader.read(65536), 5) == b""
    finally:
        writer.close()
    await assert_healthy(client, server)


async def test_large_requests_on_one_kept_alive_connection_are_fine(
    start_server: ServerFactory, client: httpx.AsyncClient
) -> None:
    """Publishes close to the payload limit, one after another on one connection, never count as head bytes."""
    server = start_server(max_header_bytes=4096, max_payload_bytes=65536)
    host, port = address(server)
    body = json.dumps({"channel": "a:1", "event": "e", "data": "x" * 60000}).encode()
    requests = b"".join(publish_request(server, body) for _ in range(4))
    raw = await raw_exchange(
        server, requests + b"GET " + api_path(server).encode() + b"/nope HTTP/1.1\r\nConnection: close\r\n\r\n"
    )
    assert raw.count(b"HTTP/1.1 201 Created") == 4, raw[:300]
    assert raw.count(b"HTTP/1.1 404") == 1
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as same_connection:
        for _ in range(4):
            response = await same_connection.post(f"{api_path(server)}/publish", content=body)
            assert response.status_code == 201, response.text
    await assert_healthy(client, server)


async def test_streams_and_keep_alive_outlive_the_header_timeout(
    start_server: ServerFactory, client: httpx.AsyncClient
) -> None:
    """The head timeout ends with the headers: a stream lives on, and a kept-alive client can send again."""
    server = start_server(header_timeout=0.5)
    async with open_stream(client, f"{server.api}/stream?channels=k:1") as stream:
        await stream.next_event()
        await asyncio.sleep(1.0)
        event_id = await publish(client, server, "k:1", "e", 1)
        assert (await stream.next_event()).id == event_id
    await wait_for_connections(client, server, 0)


async def test_guard_relies_only_on_what_uvicorn_has() -> None:
    """The parser callbacks and attributes the head guard overrides or uses exist in the installed uvicorn
    (the behaviour itself is pinned by the slow-loris, 408, 414 and 431 tests against a real server)."""
    import inspect

    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    from ssehub.guard import GuardedHttpToolsProtocol, GuardedProtocolFactory

    expected = {
        "connection_made": ["transport"],
        "connection_lost": ["exc"],
        "data_received": ["data"],
        "send_400_response": ["msg"],
        "on_message_begin": [],
        "on_url": ["url"],
        "on_header": ["name", "value"],
        "on_headers_complete": [],
        "on_message_complete": [],
    }
    for name, parameters in expected.items():
        method = getattr(HttpToolsProtocol, name)
        assert list(inspect.signature(method).parameters)[1:] == parameters, name

    async def app(scope: object, receive: object, send: object) -> None:
        """Never called: the protocol is only built."""

    loop = asyncio.get_running_loop()
    protocol = GuardedProtocolFactory(1.0, 1024, 0)(uvicorn.Config(app), ServerState(), {}, loop)
    assert isinstance(protocol, GuardedHttpToolsProtocol)
    for attribute in ("loop", "logger", "cycle", "flow", "transport", "client", "parser"):
        assert hasattr(protocol, attribute), attribute


# -- per identity, with real credentials -------------------------------------------------------------------

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"
IDENTITY_KEYS = [
    {"key": KEY_A, "scopes": ["subscribe", "publish"], "channels": ["*"], "name": "a"},
    {"key": KEY_B, "scopes": ["subscribe", "publish"], "channels": ["*"], "name": "b"},
]


async def test_streams_per_identity_count_an_api_key_across_addresses(
    start_server: ServerFactory, client: httpx.AsyncClient
) -> None:
    """Past max_streams_per_identity an API key gets 429 TOO_MANY_STREAMS from any address; another key does not."""
    server = start_server(api_keys=IDENTITY_KEYS, max_streams_per_identity=2, max_streams_per_client=10)
    url = f"{server.api}/stream?channels=a:1"
    async with contextlib.AsyncExitStack() as stack:
        for forwarded in ("203.0.113.1", "203.0.113.2"):
            headers = {"X-API-Key": KEY_A, "X-Forwarded-For": forwarded}
            stream = await stack.enter_async_context(open_stream(client, url, headers=headers))
            assert stream.response.status_code == 200
        refused = await client.get(url, headers={"X-API-Key": KEY_A, "X-Forwarded-For": "203.0.113.3"})
        assert (refused.status_code, refused.json()["code"]) == (429, "TOO_MANY_STREAMS")
        assert "SSEHUB_MAX_STREAMS_PER_IDENTITY" in refused.json()["error"]
        other = await stack.enter_async_context(open_stream(client, url, headers={"X-API-Key": KEY_B}))
        assert other.response.status_code == 200
        # Refused credentials are answered 401 and take no slot.
        assert (await client.get(url, headers={"X-API-Key": "wrong-key-0123456789"})).status_code == 401
    await wait_for_connections(client, server, 0)
    async with open_stream(client, url, headers={"X-API-Key": KEY_A}) as stream:
        assert stream.response.status_code == 200


async def test_publish_rate_counts_per_api_key(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """The publish rate is counted per API key: one key at its limit does not slow another from the same address."""
    server = start_server(api_keys=IDENTITY_KEYS, publish_rate=0.5, publish_burst=2)
    body = {"channel": "a:1", "event": "e", "data": 1}
    for _ in range(2):
        response = await client.post(f"{server.api}/publish", json=body, headers={"X-API-Key": KEY_A})
        assert response.status_code == 201
    refused = await client.post(f"{server.api}/publish", json=body, headers={"X-API-Key": KEY_A})
    assert (refused.status_code, refused.json()["code"]) == (429, "RATE_LIMITED")
    assert int(refused.headers["retry-after"]) >= 1
    response = await client.post(f"{server.api}/publish", json=body, headers={"X-API-Key": KEY_B})
    assert response.status_code == 201


async def test_refused_publish_with_a_large_body_is_read_and_answered(
    start_server: ServerFactory, client: httpx.AsyncClient
) -> None:
    """A 401 to a publish whose body the client sends before reading is drained: the client reads the 401."""
    server = start_server(api_keys=IDENTITY_KEYS, max_drain_bytes=8 << 20)
    body = json.dumps({"channel": "a:1", "event": "e", "data": "x" * 60000}).encode() * 50  # 3 MB, unread
    sent_all, raw = await send_then_read(
        server, publish_request(server, body, "Connection: close\r\nX-API-Key: wrong-key-0123456789\r\n"), chunks=60
    )
    assert sent_all
    status, _, answer = parse_response(raw)
    assert status == 401
    assert json.loads(answer)["code"].startswith(("UNAUTHORIZED", "INVALID"))
    await wait_for_connections(client, server, 0)


async def test_guarded_protocol_keeps_uvicorns_compact_instance_layout() -> None:
    """The guard adds one attribute to uvicorn's protocol, so its instances keep CPython's shared-key dict.

    Past 30 attributes an instance gets a dictionary of its own, about 1.3 KiB more per open connection.
    """
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    from ssehub.guard import GuardedProtocolFactory

    config = Config(app=create_app(make_settings()))
    config.load()
    plain = HttpToolsProtocol(config, ServerState(), {})
    guarded = GuardedProtocolFactory(10.0, 8192, 65536)(config, ServerState(), {})
    for protocol in (plain, guarded):
        protocol.on_message_begin()  # sets the per-request attributes too
    assert set(vars(guarded)) - set(vars(plain)) == {"_guard"}
    assert sys.getsizeof(vars(guarded)) <= sys.getsizeof(vars(plain)) + 64


async def test_a_request_waiting_unread_in_the_socket_is_not_taken_for_an_idle_connection() -> None:
    """When the head timer runs out while the request waits unread (the server is behind, as in a reconnect storm),
    the connection gets more time, a bounded number of times; a connection that sent nothing is closed."""
    import socket

    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from ssehub.guard import MAX_HEAD_EXTENSIONS, GuardedHttpToolsProtocol, GuardedProtocolFactory

    config = Config(app=create_app(make_settings()))
    config.load()
    factory = GuardedProtocolFactory(0.05, 8192, 65536)
    loop = asyncio.get_running_loop()

    async def connect(payload: bytes) -> tuple[asyncio.Transport, GuardedHttpToolsProtocol, socket.socket]:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        transport, protocol = await loop.connect_accepted_socket(lambda: factory(config, ServerState(), {}), ours)
        transport.pause_reading()  # the server is "busy": it reads nothing
        theirs.sendall(payload)
        return transport, protocol, theirs

    waiting, waiting_protocol, peer = await connect(b"GET /api/v1/events/health HTTP/1.1\r\nHost: x\r\n\r\n")
    idle, _idle_protocol, idle_peer = await connect(b"")
    try:
        await asyncio.sleep(0.05 * (MAX_HEAD_EXTENSIONS + 3))
        assert idle.is_closing()  # nothing arrived: an idle connection, closed
        # The request sat unread through every extension: then it is closed as well (the bound holds).
        assert waiting.is_closing()
        assert waiting_protocol._guard.extensions == MAX_HEAD_EXTENSIONS
    finally:
        for sock in (peer, idle_peer):
            sock.close()


async def test_a_request_read_late_by_a_busy_server_is_answered() -> None:
    """A request that waited unread past the head timeout, then read, gets its answer instead of a reset."""
    import socket

    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from ssehub.guard import GuardedProtocolFactory

    config = Config(app=create_app(make_settings()))
    config.load()
    factory = GuardedProtocolFactory(0.05, 8192, 65536)
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    transport, _protocol = await loop.connect_accepted_socket(lambda: factory(config, ServerState(), {}), ours)
    transport.pause_reading()
    theirs.sendall(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        await asyncio.sleep(0.12)  # past the head timeout, within the extensions
        assert not transport.is_closing()
        transport.resume_reading()
        theirs.setblocking(False)
        answer = await asyncio.wait_for(loop.sock_recv(theirs, 65536), 5)
        assert answer.startswith(b"HTTP/1.1 404 "), answer[:80]
    finally:
        transport.close()
        theirs.close()
