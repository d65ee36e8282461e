"""nginx-specific controls: the shipped settings matter, since the same file with them undone fails."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from ssehub.testing import open_stream
from tests.deploy.conftest import PREFIX, READ_TIMEOUT, ProxyFactory, Upstream, held_stream, proxy_client, publish

pytestmark = [pytest.mark.anyio, pytest.mark.proxy]

#: How long the negative control watches a buffering proxy for the first byte of the body (the shipped file
#: delivers within a second; see test_proxies.UNBUFFERED_BOUND).
WATCH = 2.5

BUFFERING_ON = ("proxy_buffering off;", "proxy_buffering on; proxy_ignore_headers X-Accel-Buffering;")


async def test_buffering_nginx_holds_the_stream(
    proxies: ProxyFactory, upstream: Upstream, direct: httpx.AsyncClient
) -> None:
    """Negative control: with proxy_buffering on and X-Accel-Buffering ignored, nothing arrives until a buffer fills."""
    proxy = proxies("nginx", "same-origin", edits=[BUFFERING_ON])
    channel = "proxy.nginx.buffered:events"
    async with held_stream(proxy, upstream, direct, channel, WATCH) as reader:
        # The bytes were held, not lost: an event larger than nginx's buffers pushes everything out.
        await publish(direct, upstream.api, channel, {"fill": "x" * 32768})
        async with asyncio.timeout(10):
            first = await reader
        assert first.event == "connected"


async def test_nginx_cuts_a_stream_whose_heartbeats_are_too_slow(
    proxies: ProxyFactory, quiet_upstream: Upstream
) -> None:
    """Negative control: with heartbeats slower than proxy_read_timeout, nginx ends a quiet stream at the timeout."""
    proxy = proxies("nginx", "same-origin", to=quiet_upstream)
    async with (
        proxy_client(proxy) as client,
        open_stream(client, f"{proxy.https_url}{PREFIX}/stream?channels=proxy.nginx:slow", timeout=10) as stream,
    ):
        connected = await stream.next()
        assert json.loads(connected.data)["heartbeat_interval"] == 30.0
        started = time.monotonic()
        with pytest.raises((EOFError, httpx.RemoteProtocolError, httpx.ReadError)):
            await stream.next(timeout=READ_TIMEOUT + 5)
        assert time.monotonic() - started >= READ_TIMEOUT - 0.5


async def test_x_accel_buffering_alone_keeps_nginx_unbuffered(
    proxies: ProxyFactory, upstream: Upstream, direct: httpx.AsyncClient
) -> None:
    """With proxy_buffering on but the header honoured, ssehub's `X-Accel-Buffering: no` alone keeps events flowing."""
    proxy = proxies("nginx", "same-origin", edits=[("proxy_buffering off;", "proxy_buffering on;")])
    channel = "proxy.nginx.accel:events"
    url = f"{proxy.https_url}{PREFIX}/stream?channels={channel}"
    async with proxy_client(proxy) as client, open_stream(client, url) as stream:
        assert (await stream.next(timeout=1.0)).event == "connected"
        event_id = await publish(direct, upstream.api, channel, {"via": "x-accel-buffering"})
        assert (await stream.next_event(timeout=1.0)).id == event_id
