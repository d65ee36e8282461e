"""Chromium (Debian's, driven by Playwright) through nginx and Caddy: native EventSource over HTTP/2 and TLS.

The page opens eight EventSources at once. Over HTTP/1.1 a browser allows six connections per origin, so two
would wait; over HTTP/2 all eight share one connection. The control loads the same page from the hub directly
(HTTP/1.1) and sees exactly six open. A stream that ssehub ends is reopened by Chromium through the proxy with
Last-Event-ID, and resumes with nothing missed. Across origins (the API-host layout), a page on the allowed
origin streams with credentials; a page elsewhere gets nothing.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.deploy.conftest import PREFIX, ProxyFactory, Upstream, publish
from tests.deploy.proxies import KINDS, Proxy

pytestmark = [pytest.mark.anyio, pytest.mark.proxy, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",  # Caddy advertises HTTP/3: stay on the TCP connection under test
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--ignore-certificate-errors",  # the test CA and Caddy's internal CA are not in Chromium's trust store
]
STREAMS = 8


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Debian's Chromium, headless; a missing binary fails with the fix (make test installs it)."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail("chromium is missing: `make test` installs it (scripts/install-system-deps.sh)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


async def _wait(page: Any, expression: str, timeout: float = 10.0) -> Any:
    async with asyncio.timeout(timeout):
        while not (value := await page.evaluate(expression)):
            await asyncio.sleep(0.05)
    return value


CONNECTED = "new Set(log.filter(e => e.type === 'connected').map(e => e.stream)).size"


async def test_chromium_eventsources_over_http2_through_proxy(
    same_origin_proxy: Proxy, upstream: Upstream, direct: httpx.AsyncClient, browser: Any
) -> None:
    """Through the proxy, the page comes over HTTP/2; all eight EventSources open and each receives the event."""
    proxy = same_origin_proxy
    channel = f"proxy.{proxy.kind}:browser"
    page = await browser.new_page()
    await page.goto(f"{proxy.https_url}/?streams={STREAMS}&channel={channel}")
    assert await page.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol") == "h2"
    await _wait(page, f"{CONNECTED} === {STREAMS}")
    event_id = await publish(direct, upstream.api, channel, {"hello": proxy.kind})
    await _wait(page, f"log.filter(e => e.type === 'note').length === {STREAMS}")
    notes = await page.evaluate("log.filter(e => e.type === 'note')")
    assert sorted(note["stream"] for note in notes) == list(range(STREAMS))
    assert {note["id"] for note in notes} == {event_id}
    assert all(note["data"] == {"hello": proxy.kind} for note in notes)
    assert await page.evaluate("window.errors") == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_chromium_reconnects_through_proxy_and_resumes(
    kind: str, proxies: ProxyFactory, brief_upstream: Upstream, direct: httpx.AsyncClient, browser: Any
) -> None:
    """When ssehub ends a stream, Chromium reconnects through the proxy with Last-Event-ID and misses nothing."""
    proxy = proxies(kind, "same-origin", to=brief_upstream)
    channel = f"proxy.{kind}:reconnect"
    page = await browser.new_page()
    await page.goto(f"{proxy.https_url}/?streams=1&channel={channel}")
    await _wait(page, "log.some(e => e.type === 'connected')")
    live = [await publish(direct, brief_upstream.api, channel, {"n": n}) for n in range(2)]
    await _wait(page, "log.filter(e => e.type === 'note').length >= 2")
    # ssehub ends the stream (connection_timeout 1.5 s); the browser reports an error and reconnects after
    # `retry` (500 ms) with Last-Event-ID. Publish inside that gap.
    await _wait(page, "window.errors >= 1")
    missed = [await publish(direct, brief_upstream.api, channel, {"n": n}) for n in range(2, 4)]
    await _wait(page, "log.filter(e => e.type === 'note').length >= 4")
    log = await page.evaluate("log")
    notes = [entry for entry in log if entry["type"] == "note"]
    assert [entry["id"] for entry in notes[:4]] == live + missed
    assert [entry["data"]["n"] for entry in notes[:4]] == [0, 1, 2, 3]
    connects = [entry["data"] for entry in log if entry["type"] == "connected"]
    assert connects[0]["resumed"] is False
    assert connects[1]["resumed"] is True


@pytest.mark.parametrize("kind", KINDS)
async def test_chromium_streams_cross_origin_through_the_api_host(
    kind: str, page_host: Proxy, proxies: ProxyFactory, upstream: Upstream, direct: httpx.AsyncClient, browser: Any
) -> None:
    """A page on the allowed origin streams with credentials from the API host over HTTP/2; another origin cannot."""
    api = proxies(kind, "api-host")
    channel = f"proxy.{kind}:cross-origin"
    query = f"streams={STREAMS}&credentials=1&channel={channel}&api={api.https_url}{PREFIX}"
    allowed = await browser.new_page()
    await allowed.goto(f"{page_host.https_url}/?{query}")
    await _wait(allowed, f"{CONNECTED} === {STREAMS}")
    # The same page on another origin (the other one-origin proxy): the browser refuses ssehub's answer.
    other = await browser.new_page()
    await other.goto(f"{proxies('nginx', 'same-origin').https_url}/?{query}")
    await _wait(other, f"window.errors >= {STREAMS}")
    event_id = await publish(direct, upstream.api, channel, {"cross": kind})
    await _wait(allowed, f"log.filter(e => e.type === 'note').length === {STREAMS}")
    notes = await allowed.evaluate("log.filter(e => e.type === 'note')")
    assert {note["id"] for note in notes} == {event_id}
    assert await allowed.evaluate("window.errors") == 0
    assert await other.evaluate("log.length") == 0


async def test_chromium_over_http11_opens_only_six(upstream: Upstream, browser: Any) -> None:
    """Control: the same page over HTTP/1.1 (the hub without a proxy) gets only six of its eight streams open."""
    page = await browser.new_page()
    await page.goto(f"{upstream.url}/?streams={STREAMS}&channel=proxy.none:browser")
    assert await page.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol") == "http/1.1"
    await _wait(page, f"{CONNECTED} >= 6")
    await asyncio.sleep(1.5)  # time enough for a seventh to open, were it allowed
    assert await page.evaluate(CONNECTED) == 6
