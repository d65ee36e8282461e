"""Through real nginx and Caddy, from the shipped files in deploy/: what SSE needs from a proxy, in both layouts.

Timing bounds: a buffering proxy holds a stream's bytes for seconds or until 4-8 KiB accumulate (see the
negative controls in test_nginx.py and test_caddy.py). The tests require every event within
:data:`UNBUFFERED_BOUND` (1 s, so a busy 2-core machine cannot flake them) and the median within the issue's
100 ms; on a quiet machine both proxies deliver in a few milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from ssehub.testing import open_stream
from tests.deploy.conftest import (
    HEARTBEAT,
    PREFIX,
    READ_TIMEOUT,
    ProxyFactory,
    Upstream,
    proxy_client,
    publish,
    tls_context,
)
from tests.deploy.proxies import KINDS, Proxy

pytestmark = [pytest.mark.anyio, pytest.mark.proxy]

#: Longest any single event may take through a proxy (generous; a buffering proxy takes far longer).
UNBUFFERED_BOUND = 1.0
#: The issue's figure, required of the median of several events.
MEDIAN_BOUND = 0.1


def channel_for(proxy: Proxy, name: str) -> str:
    """A channel of its own for each proxy and test, so that parametrised runs never see each other's events."""
    return f"proxy.{proxy.kind}.{proxy.layout}:{name}"


async def test_first_bytes_and_events_arrive_unbuffered(
    proxy: Proxy, upstream: Upstream, direct: httpx.AsyncClient
) -> None:
    """The first bytes (retry, connected) come at once, and each published event within 1 s, median 100 ms."""
    channel = channel_for(proxy, "latency")
    async with proxy_client(proxy) as client:
        started = time.monotonic()
        async with open_stream(
            client, f"{proxy.https_url}{PREFIX}/stream?channels={channel}", headers={"accept-encoding": "gzip"}
        ) as stream:
            response = stream.response
            assert response.status_code == 200
            assert response.http_version == "HTTP/1.1"
            assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
            # Never compressed, although the client accepts gzip (and nginx's http{} here gzips text/event-stream).
            assert "content-encoding" not in response.headers
            first = await stream.next(timeout=UNBUFFERED_BOUND)
            first_after = time.monotonic() - started
            assert first.event == "connected"
            assert first.retry == 500
            latencies = []
            for n in range(6):
                sent = time.monotonic()
                # Publish to the hub directly: the time measured is the hub's and the proxy's, not a second
                # trip through the proxy.
                await publish(direct, upstream.api, channel, {"n": n})
                try:
                    message = await stream.next_event(timeout=UNBUFFERED_BOUND)
                except TimeoutError:
                    pytest.fail(f"event {n} did not arrive within {UNBUFFERED_BOUND} s (is the proxy buffering?)")
                latencies.append(time.monotonic() - sent)
                assert json.loads(message.data) == {"n": n}
                await asyncio.sleep(0.05)
    assert first_after < UNBUFFERED_BOUND
    assert max(latencies) < UNBUFFERED_BOUND, latencies
    assert statistics.median(latencies) < MEDIAN_BOUND, latencies


async def test_quiet_stream_outlives_the_read_timeout(
    proxy: Proxy, upstream: Upstream, direct: httpx.AsyncClient
) -> None:
    """A stream with no events stays open past twice the proxy's read timeout, kept alive by heartbeats."""
    channel = channel_for(proxy, "quiet")
    url = f"{proxy.https_url}{PREFIX}/stream?channels={channel}"
    async with proxy_client(proxy) as client, open_stream(client, url) as stream:
        assert (await stream.next()).event == "connected"
        heartbeats = 0
        deadline = time.monotonic() + 2 * READ_TIMEOUT + 0.5
        while time.monotonic() < deadline:
            try:
                message = await stream.next(timeout=READ_TIMEOUT)
            except EOFError:
                pytest.fail(f"the proxy ended a quiet stream after {heartbeats} heartbeats")
            assert message.event == "heartbeat"
            heartbeats += 1
        assert heartbeats >= (2 * READ_TIMEOUT) / HEARTBEAT / 2
        # Still a live stream, not a zombie: an event gets through.
        await publish(direct, upstream.api, channel, {"after": "quiet"})
        assert json.loads((await stream.next_event()).data) == {"after": "quiet"}


async def test_resume_by_header_and_query_passes_through(proxy: Proxy) -> None:
    """Last-Event-ID and the lastEventId query reach ssehub: a resumed stream replays exactly the missed events."""
    channel = channel_for(proxy, "resume")
    api = proxy.https_url + PREFIX
    async with proxy_client(proxy) as client:
        ids = [await publish(client, api, channel, {"n": n}) for n in range(3)]
        for headers, query in (({"last-event-id": ids[0]}, ""), ({}, f"&lastEventId={ids[0]}")):
            async with open_stream(client, f"{api}/stream?channels={channel}{query}", headers=headers) as stream:
                connected = await stream.next()
                assert connected.event == "connected"
                assert json.loads(connected.data)["resumed"] is True
                replayed = await stream.take(2)
                assert [m.id for m in replayed] == ids[1:]
                assert [json.loads(m.data) for m in replayed] == [{"n": 1}, {"n": 2}]


async def test_upstream_gets_http11_keepalive_and_forwarded_headers(proxy: Proxy) -> None:
    """Upstream requests are HTTP/1.1 on a reused connection, with X-Forwarded-For/Proto and Authorization intact."""
    async with proxy_client(proxy) as client:
        seen = []
        for _ in range(3):
            response = await client.get(
                f"{proxy.https_url}{PREFIX}/_echo?x=1",
                headers={"authorization": "Bearer t0ken.with.dots", "last-event-id": "1-0"},
            )
            assert response.status_code == 200
            seen.append(response.json())
    for request in seen:
        headers = request["headers"]
        assert request["http_version"] == "1.1"
        assert request["path"] == f"{PREFIX}/_echo"
        assert request["query"] == "x=1"
        assert headers["authorization"] == ["Bearer t0ken.with.dots"]
        assert headers["last-event-id"] == ["1-0"]
        assert headers["x-forwarded-for"] == ["127.0.0.1"]
        assert headers["x-forwarded-proto"] == ["https"]
        assert headers["host"][0].split(":")[0] == "localhost"
        assert "close" not in ",".join(headers.get("connection", [])).lower()
    # Keep-alive: the proxy sent all three over one upstream connection (same source port).
    assert len({request["peer_port"] for request in seen}) == 1, [r["peer_port"] for r in seen]


async def test_publish_and_errors_pass_through(proxy: Proxy) -> None:
    """Health and publish work through the proxy, and ssehub's own JSON 413 reaches the client (not the proxy's)."""
    api = proxy.https_url + PREFIX
    async with proxy_client(proxy) as client:
        health = await client.get(f"{api}/health")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        too_big = {"channel": channel_for(proxy, "big"), "event": "note", "data": "x" * 100_000}
        response = await client.post(f"{api}/publish", json=too_big)
        assert response.status_code == 413
        assert response.json()["code"] == "PAYLOAD_TOO_LARGE"


async def test_request_bodies_stream_to_the_upstream(proxy: Proxy, upstream: Upstream) -> None:
    """The proxy forwards a request body as it arrives (no request buffering): the upstream has the first part early."""
    name = f"{proxy.kind}-{proxy.layout}"
    seen = upstream.body_signal(name)
    arrived: list[bool] = []

    async def body() -> AsyncIterator[bytes]:
        yield b'{"first": "' + b"x" * 2000 + b'", '
        # A buffering proxy sends nothing upstream before the whole body is in: then this wait runs out.
        arrived.append(await asyncio.to_thread(seen.wait, 5.0))
        yield b'"second": true}'

    async with proxy_client(proxy) as client:
        response = await client.post(
            f"{proxy.https_url}{PREFIX}/_echo", content=body(), headers={"x-echo-signal": name}
        )
    assert response.status_code == 200
    assert response.json()["body_bytes"] == 2000 + len(b'{"first": "", "second": true}')
    assert arrived == [True], "the upstream saw no part of the body before it was complete"


async def test_only_the_api_is_forwarded(proxy: Proxy, upstream: Upstream, direct: httpx.AsyncClient) -> None:
    """The hub's root paths (/metrics) are not reachable through the proxy: only the API prefix is forwarded."""
    assert (await direct.get(f"{upstream.url}/metrics")).text == "upstream root path"
    async with proxy_client(proxy) as client:
        response = await client.get(f"{proxy.https_url}/metrics")
    assert response.status_code == 404
    assert "upstream root path" not in response.text


async def test_plain_http_redirects_to_https(proxy: Proxy) -> None:
    """Plain HTTP answers only with a redirect to https, so a page never mixes http streams into https."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        response = await client.get(f"{proxy.http_url}{PREFIX}/health?a=1")
    assert response.status_code in (301, 308)
    location = response.headers["location"]
    assert location.startswith("https://localhost")
    assert location.endswith(f"{PREFIX}/health?a=1")


async def test_http2_streams_share_one_connection_unbuffered(
    proxy: Proxy, upstream: Upstream, direct: httpx.AsyncClient
) -> None:
    """Over HTTP/2 with TLS, eight streams share one TCP connection and each gets a published event at once."""
    channel = channel_for(proxy, "h2")
    async with proxy_client(proxy, http2=True) as client, contextlib.AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(open_stream(client, f"{proxy.https_url}{PREFIX}/stream?channels={channel}"))
            for _ in range(8)
        ]
        local_addresses = set()
        stream_ids = set()
        for stream in streams:
            assert stream.response.http_version == "HTTP/2"
            assert "content-encoding" not in stream.response.headers
            local_addresses.add(stream.response.extensions["network_stream"].get_extra_info("client_addr"))
            stream_ids.add(stream.response.extensions["stream_id"])
            first = await stream.next(timeout=UNBUFFERED_BOUND)
            assert first.event == "connected"
        assert len(local_addresses) == 1, local_addresses  # one TCP connection...
        assert len(stream_ids) == 8  # ...carrying eight HTTP/2 streams
        sent = time.monotonic()
        await publish(direct, upstream.api, channel, {"to": "all"})
        for stream in streams:
            try:
                message = await stream.next_event(timeout=UNBUFFERED_BOUND)
            except TimeoutError:
                pytest.fail(f"an HTTP/2 stream got no event within {UNBUFFERED_BOUND} s (is the proxy buffering?)")
            assert json.loads(message.data) == {"to": "all"}
        assert time.monotonic() - sent < UNBUFFERED_BOUND


async def test_cors_preflight_passes_through(api_host_proxy: Proxy) -> None:
    """On the API host, a CORS preflight reaches the upstream intact and its Access-Control-* answer comes back once."""
    proxy = api_host_proxy
    origin = "https://app.example.com"
    async with proxy_client(proxy) as client:
        response = await client.options(
            f"{proxy.https_url}{PREFIX}/_echo",
            headers={
                "origin": origin,
                "access-control-request-method": "GET",
                "access-control-request-headers": "authorization, last-event-id",
            },
        )
    assert response.status_code == 200
    request = response.json()
    assert request["method"] == "OPTIONS"
    assert request["headers"]["origin"] == [origin]
    assert request["headers"]["access-control-request-method"] == ["GET"]
    assert request["headers"]["access-control-request-headers"] == ["authorization, last-event-id"]
    # Exactly the upstream's answer: one Allow-Origin (the proxy adds none), credentials allowed, Vary kept.
    assert response.headers.get_list("access-control-allow-origin") == [origin]
    assert response.headers.get_list("access-control-allow-credentials") == ["true"]
    assert "Origin" in response.headers.get("vary", "")


#: The header timeout lines of the shipped files and the 1 s the slow-client test uses instead.
SHORT_HEADER_TIMEOUT = {
    "nginx": ("client_header_timeout 10s;", "client_header_timeout 1s;"),
    "caddy": ("read_header 10s", "read_header 1s"),
}


@pytest.mark.parametrize("kind", KINDS)
async def test_a_client_trickling_its_headers_is_dropped(kind: str, proxies: ProxyFactory) -> None:
    """A client that never finishes its request headers is disconnected after the header timeout (here 1 s)."""
    proxy = proxies(kind, "same-origin", edits=[SHORT_HEADER_TIMEOUT[kind]])
    context = tls_context(proxy)
    port = int(proxy.https_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
    try:
        writer.write(b"GET " + PREFIX.encode() + b"/health HTTP/1.1\r\nHost: localhost\r\n")  # no blank line
        await writer.drain()
        started = time.monotonic()
        async with asyncio.timeout(8):
            while await reader.read(4096):
                pass  # a 408 answer may come first; the point is the connection's end
        assert 0.5 <= time.monotonic() - started < 8
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


#: What a CORS answer consists of, besides its status and body.
CORS_HEADERS = (
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
    "vary",
    "content-type",
)


async def test_preflight_gets_ssehubs_own_answer(
    api_host_proxy: Proxy, upstream: Upstream, direct: httpx.AsyncClient, page_origin: str
) -> None:
    """A CORS preflight for a stream gets through the API-host proxy exactly ssehub's own answer: 204, the origin."""
    proxy = api_host_proxy
    headers = {
        "origin": page_origin,
        "access-control-request-method": "GET",
        "access-control-request-headers": "authorization, last-event-id",
    }
    expected = await direct.options(f"{upstream.api}/stream", headers=headers)
    async with proxy_client(proxy) as client:
        answer = await client.options(f"{proxy.https_url}{PREFIX}/stream", headers=headers)
    assert expected.status_code == 204
    assert expected.headers.get_list("access-control-allow-origin") == [page_origin]
    assert answer.status_code == expected.status_code
    assert answer.content == expected.content
    for name in CORS_HEADERS:
        assert answer.headers.get_list(name) == expected.headers.get_list(name), name
