"""Publisher and AsyncPublisher: the same script, ids and format as a publish through the broker."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator

import pytest

from ssehub.brokers.redis import RedisBroker
from ssehub.events import Event, EventId
from ssehub.exceptions import BrokerUnavailableError, InvalidValueError, MissingDependencyError
from ssehub.publisher import AsyncPublisher, Publisher
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
async def listening(redis_server: RedisServer) -> AsyncIterator[tuple[RedisBroker, list[Event]]]:
    """A broker subscribed to the helper channels and to ``x``, collecting deliveries."""
    delivered: list[Event] = []
    broker = RedisBroker(redis_server.url, socket_timeout=2.0, connect_timeout=2.0)
    await broker.start(delivered.append)
    for name in ("download:updates", "queue:updates", "system:notifications", "x"):
        await broker.subscribe(name)
    try:
        yield broker, delivered
    finally:
        await broker.stop()


async def _wait(delivered: list[Event], count: int) -> list[Event]:
    deadline = time.monotonic() + 5
    while len(delivered) < count:
        assert time.monotonic() < deadline, f"expected {count} deliveries, got {delivered}"
        await asyncio.sleep(0.005)
    return delivered


async def test_sync_publisher_matches_the_broker(
    redis_server: RedisServer, listening: tuple[RedisBroker, list[Event]]
) -> None:
    """Events from Publisher get ids in the broker's sequence, are stored and delivered live."""
    broker, delivered = listening
    before = await broker.publish("x", "e", '"hub"')
    with Publisher.from_url(redis_server.url) as publisher:
        first = await asyncio.to_thread(publisher.publish, "x", "e", {"n": 1, "text": "é"})
        progress = await asyncio.to_thread(publisher.publish_download_progress, "dl-1", 37.5, speed="1 MB/s")
        queue = await asyncio.to_thread(publisher.publish_queue_update, queue_id="q", size=3)
        note = await asyncio.to_thread(publisher.publish_system_notification, "hello", level="warning")
    assert EventId.parse(first) > before.id
    events = (await _wait(delivered, 5))[1:]
    assert [str(event.id) for event in events] == [first, progress, queue, note]
    assert [(e.channel, e.event) for e in events] == [
        ("x", "e"),
        ("download:updates", "download_progress"),
        ("queue:updates", "queue_update"),
        ("system:notifications", "system_notification"),
    ]
    assert events[0].data == '{"n":1,"text":"é"}'
    assert json.loads(events[1].data) == {"download_id": "dl-1", "progress": 37.5, "speed": "1 MB/s"}
    assert json.loads(events[2].data) == {"queue_id": "q", "size": 3}
    assert json.loads(events[3].data) == {"message": "hello", "level": "warning"}
    stored = await broker.read_since(["x"], before.id, limit=10)
    assert stored.events == [events[0]]


async def test_async_publisher_matches_the_broker(
    redis_server: RedisServer, listening: tuple[RedisBroker, list[Event]]
) -> None:
    """AsyncPublisher publishes the same events as Publisher, in the broker's id order."""
    broker, delivered = listening
    async with AsyncPublisher.from_url(redis_server.url) as publisher:
        ids = [
            await publisher.publish("x", "e", [1, 2]),
            await publisher.publish_download_progress("dl-2", 100),
            await publisher.publish_queue_update(position=1),
            await publisher.publish_system_notification("done"),
        ]
    events = await _wait(delivered, 4)
    assert [str(event.id) for event in events] == ids
    assert ids == sorted(ids, key=EventId.parse)
    assert events[0].data == "[1,2]"
    assert json.loads(events[3].data) == {"message": "done", "level": "info"}
    assert await broker.head() == EventId.parse(ids[-1])


async def test_publishers_validate_before_sending(redis_server: RedisServer) -> None:
    """Bad channels, event types, data and progress values raise InvalidValueError."""
    async with AsyncPublisher.from_url(redis_server.url) as publisher:
        with pytest.raises(InvalidValueError):
            await publisher.publish("bad channel", "e", 1)
        with pytest.raises(InvalidValueError):
            await publisher.publish("x", "bad\nevent", 1)
        with pytest.raises(InvalidValueError) as refused:
            await publisher.publish("x", "e", float("nan"))
        assert refused.value.code == "INVALID_DATA"
        with pytest.raises(InvalidValueError):
            await publisher.publish("x", "e", object())
        with pytest.raises(InvalidValueError):
            await publisher.publish_download_progress("dl", True)


def test_sync_publisher_unreachable_redis_fails_fast(redis_server: RedisServer) -> None:
    """A blocking publish to a dead Redis raises BrokerUnavailableError within its timeouts."""
    redis_server.kill()
    with Publisher.from_url(redis_server.url, socket_timeout=1.0, connect_timeout=1.0) as publisher:
        began = time.monotonic()
        with pytest.raises(BrokerUnavailableError):
            publisher.publish("x", "e", 1)
        assert time.monotonic() - began < 3


def test_missing_redis_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without redis-py, building a publisher or broker raises MissingDependencyError naming ssehub[redis]."""
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(MissingDependencyError, match=r"ssehub\[redis\]"):
        Publisher.from_url("redis://127.0.0.1:1/0")
    with pytest.raises(MissingDependencyError):
        RedisBroker("redis://127.0.0.1:1/0")
