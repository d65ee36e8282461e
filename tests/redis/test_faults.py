"""The Redis broker under faults: killed pub/sub connections, Redis restarts, an unreachable or frozen Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio

from ssehub.brokers.redis import RedisBroker
from ssehub.events import Event, EventId
from ssehub.exceptions import BrokerUnavailableError
from ssehub.publisher import AsyncPublisher
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


def fast_broker(url: str, pool_size: int = 8) -> RedisBroker:
    """A broker with short timeouts, so faults show within a second or two."""
    return RedisBroker(
        url, pool_size=pool_size, socket_timeout=1.0, connect_timeout=1.0, reconnect_max_delay=0.5, ping_interval=0.5
    )


async def eventually(check: Callable[[], bool], within: float = 10.0, what: str = "condition") -> None:
    """Poll ``check`` until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def broker_and_events(redis_server: RedisServer) -> AsyncIterator[tuple[RedisBroker, list[Event]]]:
    """A started RedisBroker with fast timeouts, and the list its deliver callback fills."""
    delivered: list[Event] = []
    broker = fast_broker(redis_server.url)
    await broker.start(delivered.append)
    try:
        yield broker, delivered
    finally:
        await broker.stop()


async def _numbered_stream(
    url: str, count: int, fault: Callable[[], Awaitable[None]], channels: tuple[str, ...] = ("n", "m")
) -> list[str]:
    """Publish ``count`` numbered events round-robin over ``channels``, running ``fault`` halfway.

    A publish that fails while Redis is away is retried until it succeeds; it may have been stored anyway
    (Redis died after the write, before the reply), so a number can be stored twice. Returns the ids.
    """
    ids: list[str] = []
    async with AsyncPublisher.from_url(url, socket_timeout=1.0, connect_timeout=1.0) as publisher:
        for number in range(count):
            if number == count // 2:
                await fault()
            deadline = time.monotonic() + 20
            while True:
                try:
                    ids.append(await publisher.publish(channels[number % len(channels)], "n", number))
                    break
                except BrokerUnavailableError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.002)
    return ids


async def _stored(broker: RedisBroker, channels: list[str]) -> list[Event]:
    return (await broker.read_since(channels, EventId(0, 0), limit=100_000)).events


async def test_client_kill_pubsub_loses_and_duplicates_nothing(
    redis_server: RedisServer, broker_and_events: tuple[RedisBroker, list[Event]]
) -> None:
    """After CLIENT KILL TYPE pubsub mid-stream, deliver still sees every event once, in order."""
    broker, delivered = broker_and_events
    await broker.subscribe("n")
    await broker.subscribe("m")
    start = await broker.head()
    admin = redis.asyncio.Redis(port=redis_server.port, socket_timeout=2)
    try:

        async def kill() -> None:
            assert await admin.client_kill_filter(_type="pubsub") >= 1

        ids = await _numbered_stream(redis_server.url, 300, kill)
    finally:
        await admin.aclose()
    await eventually(lambda: len(delivered) >= 300, what="300 deliveries")
    await asyncio.sleep(0.1)
    assert [str(event.id) for event in delivered] == ids
    assert [int(event.data) for event in delivered] == list(range(300))
    assert broker.status().details["reconnects"] >= 1
    assert (await broker.read_since(["n", "m"], start, limit=1000)).events == delivered


async def test_redis_restart_with_aof_loses_and_duplicates_nothing(
    redis_server: RedisServer, broker_and_events: tuple[RedisBroker, list[Event]]
) -> None:
    """A Redis kill and restart mid-stream: every stored event is delivered once, in id order."""
    broker, delivered = broker_and_events
    await broker.subscribe("n")
    await broker.subscribe("m")
    start = await broker.head()

    async def restart() -> None:
        await asyncio.to_thread(redis_server.restart)

    await _numbered_stream(redis_server.url, 200, restart)
    stored = (await broker.read_since(["n", "m"], start, limit=1000)).events
    await eventually(lambda: len(delivered) >= len(stored), what="every stored event delivered")
    await asyncio.sleep(0.1)
    assert delivered == stored
    assert sorted({int(event.data) for event in delivered}) == list(range(200))


async def test_unreachable_redis_fails_fast_and_recovers(
    redis_server: RedisServer, broker_and_events: tuple[RedisBroker, list[Event]]
) -> None:
    """With Redis down, calls raise BrokerUnavailableError quickly and status is down; all recovers after."""
    broker, delivered = broker_and_events
    await broker.subscribe("a")
    assert broker.status().connected
    redis_server.kill()
    began = time.monotonic()
    with pytest.raises(BrokerUnavailableError):
        await broker.publish("a", "e", "1")
    with pytest.raises(BrokerUnavailableError):
        await broker.read_since(["a"], EventId(0, 0), 10)
    with pytest.raises(BrokerUnavailableError):
        await broker.head()
    assert time.monotonic() - began < 5
    await eventually(lambda: not broker.status().connected, what="status down")
    assert broker.status().details["last_error"]
    await asyncio.to_thread(redis_server.start)
    await eventually(lambda: broker.status().connected, what="status up again")
    event = await broker.publish("a", "e", "2")
    await eventually(lambda: delivered == [event], what="delivery after recovery")


async def test_frozen_redis_is_detected_by_ping(
    redis_server: RedisServer, broker_and_events: tuple[RedisBroker, list[Event]]
) -> None:
    """A Redis that stops answering without closing sockets is found by PING; the broker recovers."""
    broker, delivered = broker_and_events
    await broker.subscribe("a")
    assert redis_server.process is not None
    pid = redis_server.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        await eventually(lambda: not broker.status().connected, within=10, what="frozen Redis detected")
    finally:
        os.kill(pid, signal.SIGCONT)
    await eventually(lambda: broker.status().connected, what="reconnected")
    event = await broker.publish("a", "e", "1")
    await eventually(lambda: delivered == [event], what="delivery after thaw")


async def test_lost_data_turns_old_ids_into_resets(
    redis_server: RedisServer, broker_and_events: tuple[RedisBroker, list[Event]]
) -> None:
    """If Redis loses its data, an id issued before is answered with expired channels, never silence."""
    broker, _ = broker_and_events
    old = await broker.publish("a", "e", "1")
    admin = redis.asyncio.Redis(port=redis_server.port, socket_timeout=2)
    try:
        await admin.flushall()
    finally:
        await admin.aclose()
    history = await broker.read_since(["a", "b"], old.id, limit=10)
    assert sorted(history.expired) == ["a", "b"]
    new = await broker.publish("a", "e", "2")
    assert new.id > old.id


async def test_subscribe_without_redis_raises(redis_server: RedisServer) -> None:
    """subscribe() on a broker that cannot reach Redis raises BrokerUnavailableError within its timeouts."""
    redis_server.kill()
    broker = fast_broker(redis_server.url)
    began = time.monotonic()
    await broker.start(lambda event: None)
    try:
        assert not broker.status().connected
        with pytest.raises(BrokerUnavailableError):
            await broker.subscribe("a")
        assert time.monotonic() - began < 8
    finally:
        await broker.stop()


async def test_stop_closes_every_connection(redis_server: RedisServer) -> None:
    """After stop() the broker holds no connection to Redis."""
    admin = redis.asyncio.Redis(port=redis_server.port, socket_timeout=2)
    try:
        before = len(await admin.client_list())
        broker = fast_broker(redis_server.url, pool_size=3)
        await broker.start(lambda event: None)
        await broker.subscribe("a")
        await asyncio.gather(*(broker.publish("a", "e", str(i)) for i in range(10)))
        during = await admin.client_list()
        assert len(during) - before <= 3 + 1
        assert sum(1 for client in during if int(client.get("sub", 0)) > 0) == 1
        await broker.stop()
        # Redis drops a closed client from CLIENT LIST when it reads the close: on a busy machine, a moment later.
        deadline = time.monotonic() + 5
        after = len(await admin.client_list())
        while after != before and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            after = len(await admin.client_list())
        assert after == before
    finally:
        await admin.aclose()
