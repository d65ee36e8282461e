"""A real browser (Debian's Chromium, driven by Playwright) consumes ssehub with the native EventSource."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route

from ssehub import Hub, create_api
from ssehub.testing import running_server
from tests.conftest import make_settings

pytestmark = [pytest.mark.anyio, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

PAGE = """<!doctype html><meta charset="utf-8"><title>ssehub</title>
<script>
window.log = [];
window.errors = 0;
const source = new EventSource("/events/stream?channels=download:updates");
const record = (e) => log.push({type: e.type, id: e.lastEventId, data: JSON.parse(e.data)});
source.addEventListener("connected", record);
source.addEventListener("download_progress", record);
source.addEventListener("reset", (e) => log.push({type: "reset", id: e.lastEventId}));
source.onerror = () => { window.errors += 1; };
</script>"""


def _need_chromium() -> None:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: `make test` installs it (scripts/install-system-deps.sh)")
        pytest.skip("chromium is not installed (make test installs it)")


@pytest.fixture
async def page_server() -> AsyncIterator[tuple[str, Hub]]:
    """The page and the hub on one origin, the stream ending every 1.5 s so the browser reconnects."""
    hub = Hub(make_settings(connection_timeout=1.5, heartbeat_interval=1.0, retry_ms=700))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with hub:
            yield

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE)

    app = Starlette(routes=[Route("/", page), Mount("/events", create_api(hub))], lifespan=lifespan)
    with running_server(app) as base:
        yield base, hub


async def _wait(page: Any, expression: str, timeout: float = 10.0) -> Any:
    async with asyncio.timeout(timeout):
        while not (value := await page.evaluate(expression)):
            await asyncio.sleep(0.05)
    return value


async def test_eventsource_receives_and_resumes(page_server: tuple[str, Hub], client: httpx.AsyncClient) -> None:
    """EventSource opens at once, gets events, and after the stream ends resumes with exactly the missed ones."""
    _need_chromium()
    from playwright.async_api import async_playwright

    base, _hub = page_server

    async def publish(n: int) -> str:
        response = await client.post(
            f"{base}/events/publish",
            json={"channel": "download:updates", "event": "download_progress", "data": {"download_id": 1, "n": n}},
        )
        assert response.status_code == 201
        return str(response.json()["id"])

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page()
            await page.goto(base + "/")
            await _wait(page, "log.some(e => e.type === 'connected')")
            live = [await publish(n) for n in range(3)]
            await _wait(page, "log.filter(e => e.type === 'download_progress').length >= 3")
            # The server ends the stream (connection_timeout); the browser reports an error and reconnects
            # after `retry` ms with Last-Event-ID. Publish inside that gap.
            await _wait(page, "window.errors >= 1")
            missed = [await publish(n) for n in range(3, 6)]
            await _wait(page, "log.filter(e => e.type === 'download_progress').length >= 6")
            log = await page.evaluate("log")
        finally:
            await browser.close()

    progress = [entry for entry in log if entry["type"] == "download_progress"]
    assert [entry["id"] for entry in progress] == live + missed
    assert [entry["data"]["n"] for entry in progress] == list(range(6))
    connects = [entry for entry in log if entry["type"] == "connected"]
    assert connects[0]["data"]["resumed"] is False
    assert connects[1]["data"]["resumed"] is True
    assert not [entry for entry in log if entry["type"] == "reset"]
