"""The Python client (ssehub.client) against a real uvicorn server: parsing, resume, backoff, refusals."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from ssehub import Hub, create_app
from ssehub.client import (
    ClientEvent,
    ConnectionState,
    ReconnectLimitError,
    SubscribeError,
    Subscriber,
    subscribe,
)
from ssehub.exceptions import MissingDependencyError
from ssehub.testing import free_port, open_stream, running_server
from tests.conftest import make_settings
from tests.redis_server import REDIS_SERVER, SKIP_REASON, redis_server
from tests.restartable_server import serve

pytestmark = pytest.mark.anyio

StartHub = Callable[..., tuple[str, Hub]]


@pytest.fixture
def start_hub() -> Iterator[StartHub]:
    """Start standalone ssehub servers (``ssehub serve``'s app) with given settings; all stop after the test."""
    with contextlib.ExitStack() as stack:

        def start(**overrides: Any) -> tuple[str, Hub]:
            hub = Hub(make_settings(**overrides))
            base = stack.enter_context(running_server(create_app(hub=hub)))
            return base + hub.settings.prefix, hub

        yield start


async def _publish(http: httpx.AsyncClient, api: str, channel: str, data: Any, event: str = "tick") -> str:
    response = await http.post(f"{api}/publish", json={"channel": channel, "event": event, "data": data})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def _take(subscriber: Subscriber, count: int, timeout: float = 10.0) -> list[ClientEvent]:
    events: list[ClientEvent] = []
    async with asyncio.timeout(timeout):
        async for event in subscriber:
            events.append(event)
            if len(events) == count:
                break
    return events


@contextlib.asynccontextmanager
async def _background(coro: Any) -> AsyncIterator[asyncio.Task[Any]]:
    task = asyncio.ensure_future(coro)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        await asyncio.wait([task])


async def test_events_arrive_parsed_with_their_channel(start_hub: StartHub, client: httpx.AsyncClient) -> None:
    """Events arrive with id, type, JSON-parsed data and the channel of a one-channel subscription; control
    events (connected, heartbeat) are hidden."""
    api, _hub = start_hub(heartbeat_interval=0.2)
    opened = asyncio.Event()
    subscriber = subscribe(
        f"{api}/stream", channels=["jobs"], on_state=lambda s: opened.set() if s.state == "open" else None
    )
    async with subscriber:
        reader = asyncio.ensure_future(_take(subscriber, 2))
        async with asyncio.timeout(5):
            await opened.wait()
        await asyncio.sleep(0.5)  # a couple of heartbeats go by unseen
        ids = [await _publish(client, api, "jobs", {"n": 1, "text": "é"}), await _publish(client, api, "jobs", [1, 2])]
        events = await reader
    assert [e.id for e in events] == ids
    assert [e.event for e in events] == ["tick", "tick"]
    assert events[0].data == {"n": 1, "text": "é"}
    assert events[1].data == [1, 2]
    assert events[1].text == "[1,2]"
    assert {e.channel for e in events} == {"jobs"}
    assert subscriber.state == "closed"


async def test_resume_across_server_side_disconnects_is_exact(start_hub: StartHub, client: httpx.AsyncClient) -> None:
    """Streams the server ends every second are resumed from the last id: every event published meanwhile
    arrives exactly once, in order."""
    api, _hub = start_hub(connection_timeout=1.0, heartbeat_interval=0.5, retry_ms=150)
    states: list[ConnectionState] = []
    published: list[str] = []

    async def publish_many() -> None:
        for n in range(40):
            published.append(await _publish(client, api, "a", {"n": n}))
            await asyncio.sleep(0.07)

    subscriber = subscribe(f"{api}/stream", channels=["a", "b"], on_state=states.append)
    async with subscriber:
        reader = asyncio.ensure_future(_take(subscriber, 40, timeout=20))
        await asyncio.sleep(0.3)
        async with _background(publish_many()) as publisher:
            events = await reader
            await publisher
    assert [e.id for e in events] == published
    assert [e.data["n"] for e in events] == list(range(40))
    assert all(e.channel is None for e in events)  # two channels: the stream does not say which
    reconnects = [s for s in states if s.state == "reconnecting"]
    assert len(reconnects) >= 2
    assert all(s.error == "the server ended the stream" for s in reconnects)


async def test_server_retry_time_sets_the_reconnect_delay(start_hub: StartHub) -> None:
    """After a clean end the client waits about the server's `retry:` time, not its own initial delay."""
    api, _hub = start_hub(connection_timeout=0.6, heartbeat_interval=0.2, retry_ms=100)
    states: list[ConnectionState] = []
    subscriber = subscribe(f"{api}/stream", channels=["a"], initial_retry_delay=30.0, on_state=states.append)
    async with subscriber:
        with contextlib.suppress(TimeoutError):
            await _take(subscriber, 1, timeout=2.5)
    delays = [s.delay for s in states if s.state == "reconnecting"]
    assert delays
    assert all(d is not None and 0.05 <= d <= 0.1 for d in delays)


async def test_full_hub_503_is_retried_until_a_slot_frees(start_hub: StartHub, client: httpx.AsyncClient) -> None:
    """A 503 MAX_CONNECTIONS is retried with growing delays (Retry-After capped by max_retry_delay); once a
    stream closes the client connects and receives events."""
    api, _hub = start_hub(max_connections=1)
    states: list[ConnectionState] = []
    async with open_stream(client, f"{api}/stream?channels=a") as held:
        assert held.response.status_code == 200
        subscriber = subscribe(
            f"{api}/stream", channels=["a"], initial_retry_delay=0.05, max_retry_delay=0.4, on_state=states.append
        )
        reader = asyncio.ensure_future(_take(subscriber, 1, timeout=15))
        async with asyncio.timeout(10):
            while len([s for s in states if s.state == "reconnecting"]) < 3:
                await asyncio.sleep(0.05)
    # The held stream is closed: a slot is free.
    async with asyncio.timeout(10):
        while subscriber.state != "open":
            await asyncio.sleep(0.05)
    event_id = await _publish(client, api, "a", {"after": "503"})
    events = await reader
    await subscriber.aclose()
    assert [e.id for e in events] == [event_id]
    refusals = [s for s in states if s.state == "reconnecting"]
    assert all(s.error is not None and "503 MAX_CONNECTIONS" in s.error for s in refusals[:3])
    assert [s.attempt for s in refusals[:3]] == [1, 2, 3]
    # Retry-After (5 s) is honoured up to the cap.
    assert all(s.delay == pytest.approx(0.4) for s in refusals[:3])


@pytest.mark.parametrize(
    ("channels", "status", "code"),
    [(["private"], 404, "UNKNOWN_CHANNEL"), (["bad channel!"], 422, "INVALID_CHANNEL")],
    ids=["404-unknown-channel", "422-invalid-channel"],
)
async def test_final_refusals_fail_at_once(start_hub: StartHub, channels: list[str], status: int, code: str) -> None:
    """404 and 422 are not retried: iteration raises SubscribeError with the hub's status, code and message."""
    api, _hub = start_hub(channels=["public*"])
    states: list[ConnectionState] = []
    with pytest.raises(SubscribeError) as caught:
        async with asyncio.timeout(5):
            await _take(subscribe(f"{api}/stream", channels=channels, on_state=states.append), 1)
    assert caught.value.status == status
    assert caught.value.code == code
    assert caught.value.error
    assert not [s for s in states if s.state == "reconnecting"]


async def test_unreachable_server_gives_up_after_max_attempts() -> None:
    """Connection refused is retried; after max_attempts failures iteration raises ReconnectLimitError."""
    states: list[ConnectionState] = []
    url = f"http://127.0.0.1:{free_port()}/api/v1/events/stream"
    subscriber = subscribe(url, initial_retry_delay=0.02, max_attempts=3, on_state=states.append)
    with pytest.raises(ReconnectLimitError, match="3 attempts"):
        await _take(subscriber, 1, timeout=5)
    assert [s.attempt for s in states if s.state == "reconnecting"] == [1, 2, 3]
    assert states[-1].state == "closed"


async def test_reset_is_handed_to_the_caller(start_hub: StartHub, client: httpx.AsyncClient) -> None:
    """A last id the hub cannot resume from yields a `reset` event (reason and channels), then live events."""
    api, _hub = start_hub()
    subscriber = subscribe(f"{api}/stream", channels=["a"], last_event_id="not-an-id")
    async with subscriber:
        first = await _take(subscriber, 1)
        event_id = await _publish(client, api, "a", {"n": 1})
        async with asyncio.timeout(5):
            second = await anext(aiter(subscriber))
    assert first[0].event == "reset"
    assert first[0].data == {"reason": "invalid_last_event_id", "channels": ["a"]}
    assert second.id == event_id


async def test_last_event_id_replays_what_came_after(start_hub: StartHub, client: httpx.AsyncClient) -> None:
    """Starting with last_event_id replays exactly the events after it (sent as Last-Event-ID)."""
    api, _hub = start_hub()
    ids = [await _publish(client, api, "a", {"n": n}) for n in range(4)]
    subscriber = subscribe(f"{api}/stream", channels=["a"], last_event_id=ids[0])
    async with subscriber:
        events = await _take(subscriber, 3)
    assert [e.id for e in events] == ids[1:]
    assert subscriber.last_event_id == ids[-1]


async def test_silent_stream_is_replaced() -> None:
    """A stream that sends nothing for longer than the heartbeat timeout counts as dead and is replaced."""
    connections = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A stalled proxy: answers the stream, then sends nothing.
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        await writer.drain()
        try:
            await reader.read()  # until the client gives up on us
        finally:
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    states: list[ConnectionState] = []
    try:
        subscriber = subscribe(
            f"http://127.0.0.1:{port}/stream", heartbeat_timeout=0.3, initial_retry_delay=0.02, on_state=states.append
        )
        async with subscriber:
            with contextlib.suppress(TimeoutError):
                await _take(subscriber, 1, timeout=2.0)
    finally:
        server.close()
        await server.wait_closed()
    assert connections >= 2
    assert any(s.error == "no data within the heartbeat timeout" for s in states)


def test_missing_httpx_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without httpx, subscribe() raises MissingDependencyError naming `pip install 'ssehub[client]'`."""
    monkeypatch.setitem(sys.modules, "httpx", None)
    with pytest.raises(MissingDependencyError, match=r"ssehub\[client\]"):
        subscribe("http://127.0.0.1:1/stream")


class Flaky:
    """An ASGI front that refuses the first ``failures`` stream requests with ``status`` (as a proxy during a
    deploy, or an auth layer would), then passes requests to the hub."""

    def __init__(self, app: Any, status: int, failures: int) -> None:
        self.app = app
        self.status = status
        self.failures = failures
        self.refused = 0
        self.stream_headers: list[dict[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/stream"):
            self.stream_headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        if scope["type"] == "http" and scope["path"].endswith("/stream") and self.refused < self.failures:
            self.refused += 1
            body = b'{"error": "refused by the test front", "code": "TEST"}'
            headers = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
            await send({"type": "http.response.start", "status": self.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
async def test_passing_refusals_are_retried(status: int, client: httpx.AsyncClient) -> None:
    """429, 500, 502, 503 and 504 are retried, waiting Retry-After (capped), until the stream opens."""
    hub = Hub(make_settings())
    front = Flaky(create_app(hub=hub), status, failures=2)
    states: list[ConnectionState] = []
    with running_server(front) as base:
        api = base + hub.settings.prefix
        subscriber = subscribe(
            f"{api}/stream", channels=["a"], initial_retry_delay=0.01, max_retry_delay=0.2, on_state=states.append
        )
        async with subscriber:
            reader = asyncio.ensure_future(_take(subscriber, 1))
            async with asyncio.timeout(10):
                while subscriber.state != "open":
                    await asyncio.sleep(0.02)
            event_id = await _publish(client, api, "a", {"ok": True})
            events = await reader
    assert [e.id for e in events] == [event_id]
    refusals = [s for s in states if s.state == "reconnecting"]
    assert [s.attempt for s in refusals] == [1, 2]
    assert all(s.error is not None and s.error.startswith(f"{status} TEST") for s in refusals)
    assert all(s.delay == pytest.approx(0.2) for s in refusals)  # Retry-After: 1, capped at 0.2


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_refusals_are_final(status: int) -> None:
    """401 and 403 raise SubscribeError at once, without a retry."""
    hub = Hub(make_settings())
    front = Flaky(create_app(hub=hub), status, failures=5)
    with running_server(front) as base, pytest.raises(SubscribeError) as caught:
        await _take(subscribe(f"{base}{hub.settings.prefix}/stream", initial_retry_delay=0.01), 1)
    assert (caught.value.status, caught.value.code) == (status, "TEST")
    assert front.refused == 1


@pytest.mark.redis
@pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON)
async def test_resume_across_a_hub_restart_on_redis() -> None:
    """The hub process is stopped and started again on the same Redis while a worker keeps publishing: the
    client reconnects by itself and receives every event once, in order, including those published while the
    hub was down."""
    from ssehub import AsyncPublisher

    states: list[ConnectionState] = []
    published: list[str] = []
    with redis_server() as redis, serve(broker_url=redis.url, demo="false") as server:
        async with AsyncPublisher.from_url(redis.url) as publisher:
            subscriber = subscribe(
                f"{server.api}/stream",
                channels=["jobs"],
                initial_retry_delay=0.05,
                max_retry_delay=0.5,
                on_state=states.append,
            )
            async with subscriber:
                reader = asyncio.ensure_future(_take(subscriber, 30, timeout=40))
                async with asyncio.timeout(10):
                    while subscriber.state != "open":
                        await asyncio.sleep(0.02)
                for n in range(10):
                    published.append(await publisher.publish("jobs", "job", {"n": n}))
                await asyncio.to_thread(server.stop)
                for n in range(10, 20):  # the hub is down: these wait in Redis
                    published.append(await publisher.publish("jobs", "job", {"n": n}))
                async with asyncio.timeout(10):
                    while len([s for s in states if s.state == "reconnecting"]) < 2:
                        await asyncio.sleep(0.02)
                await asyncio.to_thread(server.start)
                for n in range(20, 30):
                    published.append(await publisher.publish("jobs", "job", {"n": n}))
                events = await reader
    assert [e.id for e in events] == published
    assert [e.data["n"] for e in events] == list(range(30))
    assert any(s.error and "ConnectError" in s.error for s in states)


async def test_leaving_releases_the_stream_at_once(start_hub: StartHub, client: httpx.AsyncClient) -> None:
    """Leaving the `async with` after a break closes the stream even on a caller's own httpx client: the hub's
    active_connections drops to zero."""
    api, _hub = start_hub()
    subscriber = subscribe(f"{api}/stream", channels=["a"], client=client, include_control=True)
    async with subscriber:
        first = await _take(subscriber, 1)
        assert (await client.get(f"{api}/health")).json()["active_connections"] == 1
    assert first[0].event == "connected"
    async with asyncio.timeout(5):
        while (await client.get(f"{api}/health")).json()["active_connections"] != 0:
            await asyncio.sleep(0.02)
    assert subscriber.state == "closed"


async def test_token_and_last_event_id_are_sent_as_headers(client: httpx.AsyncClient) -> None:
    """The token goes out as `Authorization: Bearer`, and every reconnect carries the last id as Last-Event-ID."""
    hub = Hub(make_settings())
    front = Flaky(create_app(hub=hub), 503, failures=1)
    with running_server(front) as base:
        api = base + hub.settings.prefix
        first = await _publish(client, api, "a", {"n": 0})
        subscriber = subscribe(
            f"{api}/stream", channels=["a"], token="s3cret", last_event_id=first, max_retry_delay=0.1
        )
        async with subscriber:
            reader = asyncio.ensure_future(_take(subscriber, 1))
            async with asyncio.timeout(10):
                while subscriber.state != "open":
                    await asyncio.sleep(0.02)
            await _publish(client, api, "a", {"n": 1})
            await reader
    assert [h["authorization"] for h in front.stream_headers] == ["Bearer s3cret", "Bearer s3cret"]
    assert [h["last-event-id"] for h in front.stream_headers] == [first, first]
    assert all(h["accept"] == "text/event-stream" for h in front.stream_headers)


async def test_token_authenticates_the_stream(start_hub: StartHub, client: httpx.AsyncClient) -> None:
    """Against a hub with credentials, no token is a final 401 and a key with subscribe rights streams events."""
    keys = [
        {"key": "reader-key-0123456789", "scopes": ["subscribe"], "channels": ["jobs"], "name": "reader"},
        {"key": "writer-key-0123456789", "scopes": ["publish"], "channels": ["jobs"], "name": "writer"},
    ]
    api, _hub = start_hub(api_keys=keys)
    with pytest.raises(SubscribeError) as caught:
        await _take(subscribe(f"{api}/stream", channels=["jobs"]), 1)
    assert (caught.value.status, caught.value.code) == (401, "UNAUTHORIZED")
    subscriber = subscribe(f"{api}/stream", channels=["jobs"], token="reader-key-0123456789")
    async with subscriber:
        reader = asyncio.ensure_future(_take(subscriber, 1))
        async with asyncio.timeout(10):
            while subscriber.state != "open":
                await asyncio.sleep(0.02)
        response = await client.post(
            f"{api}/publish",
            json={"channel": "jobs", "event": "job", "data": {"n": 1}},
            headers={"Authorization": "Bearer writer-key-0123456789"},
        )
        assert response.status_code == 201, response.text
        events = await reader
    assert [e.id for e in events] == [response.json()["id"]]
