"""Caddy-specific checks: the page is compressed and the stream is not; buffering and the read timeout are real.

Caddy 2.6 flushes text/event-stream at once whatever `flush_interval` says and its `encode` leaves that type
alone, so the one way to make it buffer a stream is `buffer_responses` (read the whole body first): the
negative control uses that.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from ssehub.testing import open_stream
from tests.deploy.conftest import PREFIX, READ_TIMEOUT, ProxyFactory, Upstream, held_stream, proxy_client

pytestmark = [pytest.mark.anyio, pytest.mark.proxy]

#: How long the negative control watches a buffering proxy (the shipped file delivers within a second).
WATCH = 2.5


async def test_buffering_caddy_holds_the_stream(
    proxies: ProxyFactory, upstream: Upstream, direct: httpx.AsyncClient
) -> None:
    """Negative control: the same Caddyfile with buffer_responses instead of flush_interval -1 delivers nothing."""
    proxy = proxies("caddy", "same-origin", edits=[("flush_interval -1 ", "buffer_responses ")])
    async with held_stream(proxy, upstream, direct, "proxy.caddy.buffered:events", WATCH) as reader:
        assert not reader.done()


async def test_caddy_compresses_the_page_but_not_the_stream(proxies: ProxyFactory) -> None:
    """In the one-origin Caddyfile, `encode` compresses the page while the stream next to it stays uncompressed."""
    proxy = proxies("caddy", "same-origin")
    async with proxy_client(proxy) as client:
        page = await client.get(f"{proxy.https_url}/", headers={"accept-encoding": "gzip"})
        assert page.status_code == 200
        assert page.headers["content-encoding"] == "gzip"
        assert "EventSource" in page.text
        async with open_stream(
            client, f"{proxy.https_url}{PREFIX}/stream?channels=proxy.caddy:gzip", headers={"accept-encoding": "gzip"}
        ) as stream:
            assert "content-encoding" not in stream.response.headers
            assert (await stream.next()).event == "connected"


async def test_caddy_cuts_a_stream_whose_heartbeats_are_too_slow(
    proxies: ProxyFactory, quiet_upstream: Upstream
) -> None:
    """Negative control: with heartbeats slower than the transport's read_timeout, Caddy ends a quiet stream."""
    proxy = proxies("caddy", "same-origin", to=quiet_upstream)
    async with proxy_client(proxy) as client:
        url = f"{proxy.https_url}{PREFIX}/stream?channels=proxy.caddy:slow"
        async with open_stream(client, url, timeout=10) as stream:
            connected = await stream.next()
            assert json.loads(connected.data)["heartbeat_interval"] == 30.0
            started = time.monotonic()
            with pytest.raises((EOFError, httpx.RemoteProtocolError, httpx.ReadError)):
                await stream.next(timeout=READ_TIMEOUT + 5)
            assert time.monotonic() - started >= READ_TIMEOUT - 0.5
