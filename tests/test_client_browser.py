"""The browser client (client.js, imported from the hub) in Debian's Chromium against a real hub.

The node tests (tests/js/) pin the client's decisions against fakes; these check that the same code does them
with a real EventSource, fetch and hub: resume through new EventSources, a 503 retried after Retry-After, a
permanent refusal given up, and a page load resuming from sessionStorage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route

from ssehub import Hub, create_api, encode
from ssehub.testing import open_stream, running_server
from tests.auth_helpers import KEY_PUBLISH, SECRET, token
from tests.conftest import make_settings
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, _need_chromium

pytestmark = [pytest.mark.anyio, pytest.mark.browser]

# The page imports the module the hub serves; `?channels=` picks the stream, `?url=` another stream URL.
PAGE = """<!doctype html><meta charset="utf-8"><title>ssehub client</title>
<script type="module">
import { SSEHubClient } from "/events/client.js";
window.log = [];
window.states = [];
window.resets = [];
const params = new URLSearchParams(location.search);
const channels = params.get("channels") || "download:updates";
// `?token=fetch`: a fresh token from the page's own /token before every connect; any other value as it is.
const token = params.get("token") === "fetch" ? async () => (await fetch("/token")).text() : params.get("token");
const client = new SSEHubClient(params.get("url") || `/events/stream?channels=${channels}`, {
  token: token ?? undefined,
  storage: sessionStorage,
  initialRetryDelay: 300,
  maxRetryDelay: 2000,
  onReset: (info) => resets.push(info),
});
client.on("download_progress", (data, event) => log.push({ id: event.lastEventId, n: data.n }));
client.onState((state, info) =>
  states.push({ state, attempt: info.attempt, delay: info.delay ?? null,
                code: info.error?.code ?? null, status: info.error?.status ?? null }));
window.client = client;
</script>"""

PageServer = Callable[..., str]


@pytest.fixture
def page_server() -> Iterator[PageServer]:
    """Start a hub with given settings behind a page at /, the API under /events; yields the factory."""
    with contextlib.ExitStack() as stack:

        def start(**overrides: Any) -> str:
            hub = Hub(make_settings(**overrides))

            @contextlib.asynccontextmanager
            async def lifespan(app: Starlette) -> AsyncIterator[None]:
                async with hub:
                    yield

            async def page(request: Request) -> HTMLResponse:
                return HTMLResponse(PAGE)

            routes = [
                Route("/", page),
                Route("/stalled", _stalled),
                Route("/token", _token),
                Mount("/events", create_api(hub)),
            ]
            app = Starlette(routes=routes, lifespan=lifespan)
            return stack.enter_context(running_server(app))

        yield start


#: The lastEventId query parameter of each request to /stalled, in order.
STALLED_REQUESTS: list[str | None] = []


async def _stalled(request: Request) -> StreamingResponse:
    """A stream that announces heartbeats every 0.5 s, sends none, and stays open: a connection a NAT dropped."""
    STALLED_REQUESTS.append(request.query_params.get("lastEventId"))
    number = len(STALLED_REQUESTS)

    async def body() -> AsyncIterator[bytes]:
        info = {"connection_id": f"s{number}", "channels": ["x"], "heartbeat_interval": 0.5, "resumed": False}
        yield encode(json.dumps(info), event="connected", id=f"{number}-0")
        await asyncio.sleep(5.0)  # silent, longer than the client's 2 s watchdog; bounded so teardown is quick

    return StreamingResponse(body(), media_type="text/event-stream")


#: Tokens /token handed out, in order.
ISSUED_TOKENS: list[str] = []


async def _token(request: Request) -> PlainTextResponse:
    """The application's token endpoint: a JWT for alice that expires in 4 to 5 seconds (whole-second exp)."""
    ISSUED_TOKENS.append(token(sub="alice", exp_in=5))
    return PlainTextResponse(ISSUED_TOKENS[-1])


@contextlib.asynccontextmanager
async def browser_page() -> AsyncIterator[Any]:
    """A fresh Chromium page (its own context, so its own sessionStorage)."""
    _need_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield page
            assert not errors, errors
        finally:
            await browser.close()


async def _wait(page: Any, expression: str, timeout: float = 10.0) -> Any:
    async with asyncio.timeout(timeout):
        while not (value := await page.evaluate(expression)):
            await asyncio.sleep(0.05)
    return value


async def _publish(client: httpx.AsyncClient, base: str, n: int, channel: str = "download:updates") -> str:
    response = await client.post(
        f"{base}/events/publish",
        json={"channel": channel, "event": "download_progress", "data": {"download_id": 1, "n": n}},
        headers={"Authorization": f"Bearer {KEY_PUBLISH}"},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_client_resumes_through_new_eventsources(page_server: PageServer, client: httpx.AsyncClient) -> None:
    """Streams the hub ends are replaced by new EventSources resuming via lastEventId: every event once, in order."""
    base = page_server(connection_timeout=1.2, heartbeat_interval=0.5)
    async with browser_page() as page:
        await page.goto(base + "/")
        await _wait(page, "states.some(s => s.state === 'open')")
        published = []
        for n in range(30):  # about 3 s: across at least two stream ends
            published.append(await _publish(client, base, n))
            await asyncio.sleep(0.1)
        await _wait(page, "log.length >= 30")
        await asyncio.sleep(0.3)  # a duplicate would arrive now
        log = await page.evaluate("log")
        states = await page.evaluate("states")
    assert [entry["n"] for entry in log] == list(range(30))
    assert [entry["id"] for entry in log] == published
    reconnects = [s for s in states if s["state"] == "reconnecting"]
    assert len(reconnects) >= 2
    assert {s["code"] for s in reconnects} == {"DISCONNECTED"}
    assert len([s for s in states if s["state"] == "open"]) == len(reconnects) + 1


async def test_full_hub_is_retried_after_retry_after(page_server: PageServer, client: httpx.AsyncClient) -> None:
    """A 503 MAX_CONNECTIONS (which stops a native EventSource) is probed, waited out, and the client connects."""
    base = page_server(max_connections=1)
    async with browser_page() as page:
        async with open_stream(client, f"{base}/events/stream?channels=other:1") as occupant:
            await occupant.next_event()
            await page.goto(base + "/")
            refused = await _wait(page, "states.find(s => s.code === 'MAX_CONNECTIONS' && s.delay !== null)")
            assert refused["state"] == "reconnecting"
            assert refused["status"] == 503
            assert refused["delay"] >= 5000  # the hub's Retry-After: 5
        # The occupant left: the slot is free when the client comes back.
        await _wait(page, "states.some(s => s.state === 'open')", timeout=20.0)
        published = await _publish(client, base, 1)
        entry = await _wait(page, "log[0]")
        states = await page.evaluate("states")
    assert entry["id"] == published
    assert states[0]["state"] == "connecting"
    assert states[-1] == {"state": "open", "attempt": 0, "delay": None, "code": None, "status": None}


async def test_client_gives_up_on_a_permanent_refusal(page_server: PageServer, client: httpx.AsyncClient) -> None:
    """A 404 UNKNOWN_CHANNEL ends the client in state closed with the hub's code, with no retry loop."""
    base = page_server(channels=["download:*"])
    async with browser_page() as page:
        await page.goto(base + "/?channels=secret:1")
        closed = await _wait(page, "states.find(s => s.state === 'closed')")
        assert closed["status"] == 404
        assert closed["code"] == "UNKNOWN_CHANNEL"
        await asyncio.sleep(1.0)
        states = await page.evaluate("states")
    assert [s["state"] for s in states] == ["connecting", "reconnecting", "closed"]


async def test_page_load_resumes_from_session_storage(page_server: PageServer, client: httpx.AsyncClient) -> None:
    """A page loaded again in the same tab resumes from the stored id: the events published meanwhile, none twice."""
    base = page_server()
    async with browser_page() as page:
        await page.goto(base + "/")
        await _wait(page, "states.some(s => s.state === 'open')")
        first = [await _publish(client, base, n) for n in range(3)]
        await _wait(page, "log.length >= 3")
        await page.goto("about:blank")
        missed = [await _publish(client, base, n) for n in range(3, 6)]
        await page.goto(base + "/")
        await _wait(page, "log.length >= 3")
        await asyncio.sleep(0.3)
        log = await page.evaluate("log")
        stored = await page.evaluate("sessionStorage.getItem('ssehub:lastEventId')")
    assert [entry["id"] for entry in log] == missed
    assert stored == missed[-1]
    assert not set(first) & {entry["id"] for entry in log}


async def test_silent_stream_is_replaced_by_the_watchdog(page_server: PageServer) -> None:
    """A stream silent for twice its announced heartbeat interval (plus 1 s) is replaced, resuming from its last id."""
    base = page_server()
    STALLED_REQUESTS.clear()
    async with browser_page() as page:
        await page.goto(base + "/?url=/stalled")
        await _wait(page, "states.some(s => s.code === 'HEARTBEAT_TIMEOUT')", timeout=10.0)
        await _wait(page, "states.filter(s => s.state === 'open').length >= 2", timeout=10.0)
    assert STALLED_REQUESTS[:2] == [None, "1-0"]


#: Tokens signed with SECRET are required to subscribe; the publisher uses an API key.
AUTH_SETTINGS: dict[str, Any] = {
    "jwt_secret": SECRET,
    "jwt_leeway": 0,
    "api_keys": [{"key": KEY_PUBLISH, "scopes": ["publish"], "channels": ["user:*"], "name": "backend"}],
}


async def test_expired_token_is_replaced_by_a_fresh_one(page_server: PageServer, client: httpx.AsyncClient) -> None:
    """When the hub ends a stream whose token expired, the client fetches a fresh token and resumes, losing nothing."""
    base = page_server(**AUTH_SETTINGS)
    ISSUED_TOKENS.clear()
    async with browser_page() as page:
        await page.goto(base + "/?channels=user:alice&token=fetch")
        await _wait(page, "states.some(s => s.state === 'open')")
        published = []
        for n in range(40):  # about 8 s: across at least one token lifetime
            published.append(await _publish(client, base, n, "user:alice"))
            await asyncio.sleep(0.2)
        await _wait(page, "log.length >= 40", timeout=15.0)
        await asyncio.sleep(0.3)
        log = await page.evaluate("log")
        states = await page.evaluate("states")
    assert [entry["id"] for entry in log] == published
    assert len(ISSUED_TOKENS) >= 2
    assert len([s for s in states if s["state"] == "open"]) >= 2
    assert not [s for s in states if s["state"] == "closed"]


async def test_refused_token_ends_the_client(page_server: PageServer) -> None:
    """A token the hub refuses (401) ends the client in state closed with the status, with no retry loop."""
    base = page_server(**AUTH_SETTINGS)
    async with browser_page() as page:
        await page.goto(base + "/?channels=user:alice&token=not-a-jwt")
        closed = await _wait(page, "states.find(s => s.state === 'closed')")
        await asyncio.sleep(1.0)
        states = await page.evaluate("states")
    assert closed["status"] == 401
    assert [s["state"] for s in states] == ["connecting", "reconnecting", "closed"]
