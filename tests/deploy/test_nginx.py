"""nginx-specific controls: the shipped settings matter, since the same file with them undone fails."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from ssehub.testing import SSEMessage, open_stream
from tests.deploy.conftest import PREFIX, READ_TIMEOUT, ProxyFactory, Upstream, proxy_client
from tests.deploy.test_proxies import UNBUFFERED_BOUND, publish

pytestmark = [pytest.mark.anyio, pytest.mark.proxy]

#: How long the negative control watches a buffering proxy for the first byte of the body.
WATCH = 2.5

BUFFERING_ON = ("proxy_buffering off;", "proxy_buffering on; proxy_ignore_headers X-Accel-Buffering;")


async def test_buffering_nginx_holds_the_stream(
    proxies: ProxyFactory, upstream: Upstream, direct: httpx.AsyncClient
) -> None:
    """Negative control: with proxy_buffering on and X-Accel-Buffering ignored, no event arrives for seconds."""
    proxy = proxies("nginx", "same-origin", edits=[BUFFERING_ON])
    channel = "proxy.nginx.buffered:events"
    async with proxy_client(proxy) as client:

        async def first_event() -> SSEMessage:
            async with open_stream(
                client, f"{proxy.https_url}{PREFIX}/stream?channels={channel}", timeout=30
            ) as stream:
                return await stream.next(timeout=30)

        reader = asyncio.create_task(first_event())
        try:
            started = time.monotonic()
            n = 0
            while time.monotonic() - started < WATCH:
                # The unbuffered file delivers each of these within UNBUFFERED_BOUND; this one holds them all.
                await publish(direct, upstream.api, channel, {"n": n})
                n += 1
                await asyncio.sleep(0.3)
            assert not reader.done(), "a buffering nginx delivered the stream: the control shows nothing"
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def test_nginx_cuts_a_stream_whose_heartbeats_are_too_slow(
    proxies: ProxyFactory, quiet_upstream: Upstream
) -> None:
    """Negative control: with heartbeats slower than proxy_read_timeout, nginx ends a quiet stream at the timeout."""
    proxy = proxies("nginx", "same-origin", to=quiet_upstream)
    async with proxy_client(proxy) as client:
        async with open_stream(
            client, f"{proxy.https_url}{PREFIX}/stream?channels=proxy.nginx:slow", timeout=10
        ) as stream:
            connected = await stream.next()
            assert json.loads(connected.data)["heartbeat_interval"] == 30.0
            started = time.monotonic()
            with pytest.raises((EOFError, httpx.RemoteProtocolError, httpx.ReadError)):
                await stream.next(timeout=READ_TIMEOUT + 5)
            assert time.monotonic() - started >= READ_TIMEOUT - 0.5
