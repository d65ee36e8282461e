"""The demo dashboard in a real browser (Debian's Chromium via Playwright) against a real `ssehub serve` process.

The page counts the `seq` of every event it receives (window.demo): these tests check that nothing is missed or
repeated across server restarts, refusals, reloads and tabs, and that the connection indicator says what happens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from ssehub.testing import open_stream
from tests.redis_server import REDIS_SERVER, SKIP_REASON, redis_server
from tests.restartable_server import RestartableServer, serve
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, _need_chromium

pytestmark = [pytest.mark.anyio, pytest.mark.browser]

CONNECTED = "document.getElementById('connection').dataset.state === 'open'"


@pytest.fixture
def memory_server() -> Iterator[RestartableServer]:
    """The demo on the memory broker."""
    with serve() as server:
        yield server


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Debian's Chromium, headless, driven by Playwright (no browser download)."""
    _need_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


async def wait_for(page: Any, expression: str, timeout: float = 20.0) -> Any:
    """Poll a JavaScript expression until it is truthy (bounded); return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression}; demo = {await page.evaluate('window.demo')}")
        await asyncio.sleep(0.1)


async def open_dashboard(context: Any, server: RestartableServer) -> Any:
    """A page on the dashboard, connected."""
    page = await context.new_page()
    await page.goto(server.base + "/")
    await wait_for(page, f"window.demo && {CONNECTED}")
    return page


def assert_consecutive(seqs: list[int]) -> None:
    """Every seq once, in order, none missing."""
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def active_connections(server: RestartableServer) -> int:
    """/health's count of open streams."""
    async with httpx.AsyncClient(timeout=5) as http:
        count: int = (await http.get(server.api + "/health")).json()["active_connections"]
        return count


async def test_dashboard_connects_and_progress_advances(browser: Any, memory_server: RestartableServer) -> None:
    """The page shows Connected, a running download's bar advances, and the received seqs have no gap."""
    page = await open_dashboard(await browser.new_context(), memory_server)
    assert await page.inner_text("#connection") == "Connected"
    row = await wait_for(page, "document.querySelector('.download[data-status=downloading]')?.dataset.id")
    bar = f"document.querySelector('.download[data-id=\"{row}\"] .bar')"
    first = float(await wait_for(page, f"{bar}.getAttribute('aria-valuenow')"))
    await wait_for(page, f"Number({bar}.getAttribute('aria-valuenow')) > {first}")
    await wait_for(page, "demo.events >= 20")
    demo = await page.evaluate("window.demo")
    assert_consecutive(demo["seqs"])
    assert (demo["gaps"], demo["duplicates"], demo["resets"]) == (0, 0, 0)
    assert await page.inner_text("#seq") == f"#{demo['lastSeq']}"
    assert await page.inner_text("#seq-check") == "no gaps"


@pytest.mark.redis
@pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON)
async def test_server_restart_on_redis_shows_reconnecting_and_resumes_without_gap(browser: Any) -> None:
    """Server stopped: the indicator shows reconnecting with the attempt count; restarted on the same Redis: it
    shows Connected again and the sequence continues with no event missing and none twice."""
    with redis_server() as redis, serve(broker_url=redis.url) as server:
        page = await open_dashboard(await browser.new_context(), server)
        await wait_for(page, "demo.events >= 10")
        server.stop()
        await wait_for(page, "demoClient.attempt >= 2")
        text = await page.inner_text("#connection")
        assert text.startswith("Reconnecting · attempt ")
        assert int(text.rsplit(" ", 1)[1]) >= 2
        stopped_at = await page.evaluate("demo.lastSeq")
        server.start()
        await wait_for(page, CONNECTED, timeout=30)
        await wait_for(page, f"demo.lastSeq >= {stopped_at} + 15")
        demo = await page.evaluate("window.demo")
    assert_consecutive(demo["seqs"])
    assert (demo["gaps"], demo["duplicates"], demo["resets"]) == (0, 0, 0)
    assert "reconnecting:2" in demo["states"]
    assert demo["states"][-1] == "open"


async def test_full_hub_503_is_retried_with_backoff(browser: Any) -> None:
    """A page refused with 503 MAX_CONNECTIONS keeps retrying (attempt 1, 2, ...) and connects once a slot frees."""
    with serve(max_connections="1") as server:
        async with httpx.AsyncClient(timeout=10) as http:
            async with open_stream(http, server.api + "/stream?channels=queue:updates") as held:
                assert held.response.status_code == 200
                page = await (await browser.new_context()).new_page()
                await page.goto(server.base + "/")
                await wait_for(page, "window.demoClient && demoClient.attempt >= 2", timeout=40)
                assert (await page.inner_text("#connection")).startswith("Reconnecting · attempt ")
            await wait_for(page, CONNECTED, timeout=40)
            await wait_for(page, "demo.events >= 5")
            demo = await page.evaluate("window.demo")
    assert "reconnecting:1" in demo["states"]
    assert "reconnecting:2" in demo["states"]
    assert_consecutive(demo["seqs"])


async def test_reload_resumes_from_the_stored_last_id(browser: Any, memory_server: RestartableServer) -> None:
    """After a reload the page resumes from the id it stored: its first event is the one after the last it had."""
    page = await open_dashboard(await browser.new_context(), memory_server)
    await wait_for(page, "demo.events >= 10")
    before = await page.evaluate("demo.lastSeq")
    await page.reload()
    await wait_for(page, f"window.demo && {CONNECTED} && demo.events >= 5")
    demo = await page.evaluate("window.demo")
    assert demo["resumedFrom"] is not None
    assert demo["resumedFrom"] >= before
    assert demo["seqs"][0] == demo["resumedFrom"] + 1
    assert_consecutive(demo["seqs"])
    assert (demo["gaps"], demo["duplicates"], demo["resets"]) == (0, 0, 0)


async def test_two_tabs_receive_the_same_events_and_closing_one_releases_it(
    browser: Any, memory_server: RestartableServer
) -> None:
    """Two tabs receive the same sequence; closing one drops /health's active_connections by one."""
    context = await browser.new_context()
    first = await open_dashboard(context, memory_server)
    second = await open_dashboard(context, memory_server)
    assert await active_connections(memory_server) == 2
    for page in (first, second):
        await wait_for(page, "demo.events >= 1")
    start = max(await first.evaluate("demo.lastSeq"), await second.evaluate("demo.lastSeq"))
    for page in (first, second):
        await wait_for(page, f"demo.lastSeq >= {start} + 15")
    one, two = await first.evaluate("demo.seqs"), await second.evaluate("demo.seqs")
    low, high = max(one[0], two[0]), min(one[-1], two[-1])
    assert high - low >= 15
    assert [s for s in one if low <= s <= high] == [s for s in two if low <= s <= high] == list(range(low, high + 1))
    await second.close()
    deadline = time.monotonic() + 10
    while await active_connections(memory_server) != 1:
        assert time.monotonic() < deadline, "closing the tab did not release its stream"
        await asyncio.sleep(0.1)


async def test_memory_broker_restart_resets_and_reloads_the_queue(
    browser: Any, memory_server: RestartableServer
) -> None:
    """On the memory broker a restart loses history: the page gets a reset, reloads the queue from the new
    server and checks the new sequence from its start, without counting the old one as gaps."""
    page = await open_dashboard(await browser.new_context(), memory_server)
    await wait_for(page, "demo.events >= 5")
    memory_server.stop()
    await wait_for(page, "demoClient.attempt >= 1")
    memory_server.start()
    await wait_for(page, f"demo.resets === 1 && {CONNECTED}", timeout=30)
    await wait_for(page, "demo.lastSeq !== null && demo.lastSeq >= 10")
    # The rows on the page are the new server's queue (compared until they agree: an event may be in flight).
    async with httpx.AsyncClient(timeout=5) as http:
        deadline = time.monotonic() + 10
        while True:
            state = (await http.get(memory_server.base + "/demo/state")).json()
            shown = await page.evaluate("[...document.querySelectorAll('.download')].map(li => li.dataset.id)")
            expected = sorted(d["download_id"] for d in state["downloads"])
            if sorted(shown) == expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    assert sorted(shown) == expected
    demo = await page.evaluate("window.demo")
    assert (demo["gaps"], demo["duplicates"]) == (0, 0)
    notes = await page.inner_text("#notifications")
    assert "history no longer covers this page" in notes


async def test_buttons_add_pause_resume_and_cancel(browser: Any, memory_server: RestartableServer) -> None:
    """The form adds a download and its buttons pause, resume and cancel it; every change shows up through the
    event stream (the page renders events, not the buttons' answers)."""
    page = await open_dashboard(await browser.new_context(), memory_server)
    await page.fill("#add-name", "browser-test.iso")
    await page.select_option("#add-size", "4096")
    await page.click("#add-form button[type=submit]")
    row = await wait_for(
        page,
        "[...document.querySelectorAll('.download')]"
        ".find(li => li.textContent.includes('browser-test.iso'))?.dataset.id",
    )
    selector = f'.download[data-id="{row}"]'
    status = f"document.querySelector('{selector}').dataset.status"
    await wait_for(page, f"['queued', 'downloading'].includes({status})")
    await page.click(f'{selector} button[data-action="pause"]')
    await wait_for(page, f"{status} === 'paused'")
    assert await page.inner_text(f"{selector} .badge") == "Paused"  # shown capitalized
    await page.click(f'{selector} button[data-action="resume"]')
    await wait_for(page, f"{status} !== 'paused'")
    await page.click(f'{selector} button[data-action="cancel"]')
    await wait_for(page, f"{status} === 'cancelled'")
    assert not await page.is_visible(f'{selector} button[data-action="pause"]')
    notes = await page.inner_text("#notifications")
    for text in (
        "Added browser-test.iso",
        "Paused browser-test.iso",
        "Resumed browser-test.iso",
        "Cancelled browser-test.iso",
    ):
        assert text in notes
    demo = await page.evaluate("window.demo")
    assert (demo["gaps"], demo["duplicates"]) == (0, 0)
