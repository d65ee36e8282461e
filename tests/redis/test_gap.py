"""Gaps in live delivery: a pub/sub outage longer than the history ends the streams, whose clients then reset.

The outage is made with Redis ACLs, not timing: revoking the default user's channel permissions disconnects
the broker's pub/sub connection and refuses its SUBSCRIBE until they are restored, while a publisher logged
in as another user keeps publishing (ACL pub/sub permissions, Redis >= 6.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import httpx
import pytest
import redis.asyncio

from ssehub import create_app
from ssehub.brokers.redis import RedisBroker
from ssehub.events import Event
from ssehub.publisher import AsyncPublisher
from ssehub.testing import open_stream, running_server
from tests.conftest import make_settings
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

HISTORY = 3

#: What the broker fixture records, in call order: delivered events and ``("gap", channels)``.
Record = list[Event | tuple[str, list[str]]]


async def eventually(check: Callable[[], bool], within: float = 10.0, what: str = "condition") -> None:
    """Poll ``check`` until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """An admin client on the test's Redis, with a ``publisher`` user that keeps its channel permissions."""
    client = redis.asyncio.Redis(port=redis_server.port, socket_timeout=2)
    try:
        await client.acl_setuser(
            "publisher", enabled=True, passwords=["+secret"], commands=["+@all"], keys=["*"], channels=["*"]
        )
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def publisher(redis_server: RedisServer, admin: redis.asyncio.Redis) -> AsyncIterator[AsyncPublisher]:
    """A publisher with the hubs' retention, logged in as ``publisher`` so it works during the outage."""
    url = f"redis://publisher:secret@127.0.0.1:{redis_server.port}/0"
    async with AsyncPublisher.from_url(url, history_size=HISTORY, socket_timeout=2.0, connect_timeout=2.0) as pub:
        yield pub


@contextlib.asynccontextmanager
async def pubsub_outage(admin: redis.asyncio.Redis, is_down: Callable[[], Awaitable[bool]]) -> AsyncIterator[None]:
    """Keep the default user's pub/sub connections out of Redis for the block, which starts once ``is_down``."""
    await admin.acl_setuser("default", enabled=True, reset_channels=True)
    try:
        async with asyncio.timeout(10):
            while not await is_down():
                await asyncio.sleep(0.01)
        yield
    finally:
        await admin.acl_setuser("default", enabled=True, channels=["*"])


async def down(broker: RedisBroker) -> bool:
    """Whether the broker's pub/sub connection is down."""
    return not broker.status().connected


@pytest.fixture
async def broker(redis_server: RedisServer) -> AsyncIterator[tuple[RedisBroker, Record]]:
    """A started broker with a small history and fast reconnects, and what its callbacks received."""
    record: Record = []

    def on_gap(channels: Sequence[str]) -> None:
        record.append(("gap", list(channels)))

    broker = RedisBroker(
        redis_server.url,
        history_size=HISTORY,
        socket_timeout=1.0,
        connect_timeout=1.0,
        reconnect_max_delay=0.2,
        ping_interval=0.5,
    )
    await broker.start(record.append, on_gap)
    try:
        yield broker, record
    finally:
        await broker.stop()


async def test_outage_longer_than_history_reports_the_gap_once(
    broker: tuple[RedisBroker, Record], admin: redis.asyncio.Redis, publisher: AsyncPublisher
) -> None:
    """More than history_size events missed on a channel: on_gap gets it once, before the events caught up."""
    redis_broker, record = broker
    await redis_broker.subscribe("a")
    await redis_broker.subscribe("b")
    before = await publisher.publish("a", "n", 0)
    await eventually(lambda: len(record) == 1, what="the first event")
    async with pubsub_outage(admin, lambda: down(redis_broker)):
        for number in range(1, HISTORY + 2):
            await publisher.publish("a", "n", number)
        on_b = await publisher.publish("b", "n", "kept")
    await eventually(lambda: len(record) >= 3, what="the gap and the caught-up event")
    live = await publisher.publish("a", "n", "live")
    await eventually(lambda: len(record) >= 4, what="a live event after the gap")
    await asyncio.sleep(0.1)
    # The trimmed events of "a" are lost and the 3 kept ones not replayed (their streams end); "b" goes on.
    assert [item if isinstance(item, tuple) else str(item.id) for item in record] == [
        before,
        ("gap", ["a"]),
        on_b,
        live,
    ]


async def test_outage_within_history_reports_no_gap(
    broker: tuple[RedisBroker, Record], admin: redis.asyncio.Redis, publisher: AsyncPublisher
) -> None:
    """Exactly history_size events missed: every one is caught up in order and on_gap is not called."""
    redis_broker, record = broker
    await redis_broker.subscribe("a")
    first = await publisher.publish("a", "n", 0)
    await eventually(lambda: len(record) == 1, what="the first event")
    async with pubsub_outage(admin, lambda: down(redis_broker)):
        missed = [await publisher.publish("a", "n", number) for number in range(1, HISTORY + 1)]
    await eventually(lambda: len(record) >= 1 + HISTORY, what="the caught-up events")
    await asyncio.sleep(0.1)
    assert [item if isinstance(item, tuple) else str(item.id) for item in record] == [first, *missed]
    assert redis_broker.status().details["reconnects"] >= 1


async def test_gap_ends_the_stream_and_the_resume_resets(
    redis_server: RedisServer, admin: redis.asyncio.Redis, publisher: AsyncPublisher
) -> None:
    """Over HTTP: the gap ends the stream cleanly before any later event; its resume gets a history_expired reset."""
    settings = make_settings(broker_url=redis_server.url, history_size=HISTORY)
    with running_server(create_app(settings)) as base_url:
        api = base_url + settings.prefix
        url = f"{api}/stream?channels=a,b"
        async with httpx.AsyncClient(timeout=5.0) as client:

            async def broker_down() -> bool:
                response = await client.get(f"{api}/health")
                return not response.json()["broker"]["connected"]

            async with open_stream(client, url, timeout=10.0) as stream:
                assert (await stream.next_event()).event == "connected"
                last = await publisher.publish("a", "n", 0)
                assert (await stream.next_event()).id == last
                async with pubsub_outage(admin, broker_down):
                    for number in range(1, HISTORY + 2):
                        await publisher.publish("a", "n", number)
                    # Caught up after the gap: written, it would carry the stream's id past the gap on "a".
                    await publisher.publish("b", "n", "after the gap")
                rest = await stream.wait_end(timeout=10.0)
                assert stream.ended
                assert [m.event for m in rest if m.event != "heartbeat"] == []
            async with open_stream(client, url, headers={"Last-Event-ID": last}) as stream:
                assert (await stream.next_event()).event == "connected"
                reset = await stream.next_event()
                assert reset.event == "reset"
                assert json.loads(reset.data) == {"reason": "history_expired", "channels": ["a"]}
