"""A real browser on another origin: EventSource with credentials, a preflighted publish and a readable JSON error
through CORS, a resume across origins, and nothing for an origin that is not on the list."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from ssehub.testing import running_server
from tests.conftest import ServerFactory
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, _need_chromium, _wait

pytestmark = [pytest.mark.anyio, pytest.mark.browser]

PAGE = """<!doctype html><meta charset="utf-8"><title>cross-origin</title>
<script>
const hub = HUB;
window.log = [];
window.errors = 0;
const source = new EventSource(hub + "/stream?channels=x:1", {withCredentials: true});
source.addEventListener("connected", (e) => log.push({type: "connected", id: e.lastEventId, data: JSON.parse(e.data)}));
source.addEventListener("e", (e) => log.push({type: "e", id: e.lastEventId, data: JSON.parse(e.data)}));
source.onerror = () => { window.errors += 1; };
window.publish = async (n) => {
  const response = await fetch(hub + "/publish", {
    method: "POST", credentials: "include",
    headers: {"Content-Type": "application/json", "X-API-Key": "not-checked-here"},
    body: JSON.stringify({channel: "x:1", event: "e", data: n}),
  });
  return [response.status, await response.json()];
};
window.readError = async () => {
  const response = await fetch(hub + "/stream?channels=bad%20name", {credentials: "include"});
  return [response.status, (await response.json()).code];
};
</script>"""


@contextlib.contextmanager
def page_origin() -> Iterator[tuple[str, list[str]]]:
    """A server on its own origin that serves the page; the hub's URL is filled in once known."""
    hub_url: list[str] = []

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE.replace("HUB", json.dumps(hub_url[0])))

    with running_server(Starlette(routes=[Route("/", page)])) as base:
        yield base, hub_url


async def test_cross_origin_page_streams_publishes_and_resumes(start_server: ServerFactory) -> None:
    """An allowed origin's page streams with credentials, publishes through a preflight, reads a JSON error, and
    resumes with exactly the missed events after the stream ends; another origin's page gets nothing."""
    _need_chromium()
    from playwright.async_api import async_playwright

    with page_origin() as (allowed, allowed_hub), page_origin() as (other, other_hub):
        server = start_server(allowed_origins=[allowed], connection_timeout=1.5, heartbeat_interval=1.0, retry_ms=700)
        allowed_hub.append(server.api)
        other_hub.append(server.api)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = await browser.new_page()
                await page.goto(allowed + "/")
                await _wait(page, "log.some(e => e.type === 'connected')")
                live = [await page.evaluate(f"publish({n})") for n in range(3)]
                assert all(status == 201 for status, _ in live), live
                await _wait(page, "log.filter(e => e.type === 'e').length >= 3")
                assert await page.evaluate("readError()") == [422, "INVALID_CHANNEL"]
                # The stream ends (connection_timeout); the browser reconnects with Last-Event-ID, cross-origin.
                await _wait(page, "window.errors >= 1")
                missed = [await page.evaluate(f"publish({n})") for n in range(3, 6)]
                await _wait(page, "log.filter(e => e.type === 'e').length >= 6")
                log: list[dict[str, Any]] = await page.evaluate("log")

                intruder = await browser.new_page()
                await intruder.goto(other + "/")
                await _wait(intruder, "window.errors >= 1")
                await asyncio.sleep(0.5)
                assert await intruder.evaluate("log") == []
                refused = await intruder.evaluate("publish(99).then(() => 'read', (e) => e.name)")
                assert refused == "TypeError"  # the answer was not readable; the browser reports a network error
            finally:
                await browser.close()

    events = [entry for entry in log if entry["type"] == "e"]
    assert [entry["id"] for entry in events] == [body["id"] for _, body in live + missed]
    assert [entry["data"] for entry in events] == list(range(6))
    connects = [entry for entry in log if entry["type"] == "connected"]
    assert connects[0]["data"]["resumed"] is False
    assert connects[1]["data"]["resumed"] is True
