"""The Redis broker and publisher through Sentinel: discovery of the master, and a failover to a replica."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis

from ssehub.brokers.redis import RedisBroker
from ssehub.events import Event
from ssehub.exceptions import BrokerUnavailableError
from ssehub.publisher import Publisher
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
def sentinel_setup(redis_server: RedisServer) -> Iterator[tuple[RedisServer, RedisServer, RedisServer]]:
    """A master (the redis_server fixture), one replica and one Sentinel watching them, on free ports."""
    replica = RedisServer(appendonly=True)
    sentinel = RedisServer(
        sentinel_conf=(
            f"sentinel monitor mymaster 127.0.0.1 {redis_server.port} 1\n"
            "sentinel down-after-milliseconds mymaster 500\n"
            "sentinel failover-timeout mymaster 2000\n"
        )
    )
    try:
        replica.start()
        client = redis.Redis(port=replica.port, socket_timeout=2)
        try:
            client.replicaof("127.0.0.1", redis_server.port)
            deadline = time.monotonic() + 10
            while client.info("replication").get("master_link_status") != "up":
                assert time.monotonic() < deadline, "replica did not sync"
                time.sleep(0.05)
        finally:
            client.close()
        sentinel.start()
        yield redis_server, replica, sentinel
    finally:
        sentinel.close()
        replica.close()


async def _eventually_delivered(delivered: list[Event], count: int, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while len(delivered) < count:
        assert time.monotonic() < deadline, f"expected {count} deliveries, got {len(delivered)}"
        await asyncio.sleep(0.02)


async def test_broker_and_publisher_find_the_master_through_sentinel(
    sentinel_setup: tuple[RedisServer, RedisServer, RedisServer],
) -> None:
    """redis+sentinel:// resolves the master for publishes, history and live delivery."""
    _, _, sentinel = sentinel_setup
    url = f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster/0"
    delivered: list[Event] = []
    broker = RedisBroker(url, socket_timeout=1.0, connect_timeout=1.0)
    await broker.start(delivered.append)
    try:
        assert broker.status().connected
        await broker.subscribe("a")
        first = await broker.publish("a", "e", "1")
        with Publisher.from_url(url) as publisher:
            second = await asyncio.to_thread(publisher.publish, "a", "e", 2)
        await _eventually_delivered(delivered, 2)
        assert [str(event.id) for event in delivered] == [str(first.id), second]
        assert broker.status().details["target"] == f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster"
    finally:
        await broker.stop()


async def test_failover_to_the_replica_keeps_delivering(
    sentinel_setup: tuple[RedisServer, RedisServer, RedisServer],
) -> None:
    """When the master dies, Sentinel promotes the replica and the broker resumes publishing and delivery."""
    master, _, sentinel = sentinel_setup
    url = f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster/0"
    delivered: list[Event] = []
    broker = RedisBroker(url, socket_timeout=1.0, connect_timeout=1.0, reconnect_max_delay=0.5, ping_interval=0.5)
    await broker.start(delivered.append)
    try:
        await broker.subscribe("a")
        before = await broker.publish("a", "e", "before")
        await _eventually_delivered(delivered, 1)
        master.kill()
        deadline = time.monotonic() + 30
        while True:
            try:
                after = await broker.publish("a", "e", "after")
                break
            except BrokerUnavailableError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        assert after.id > before.id
        await _eventually_delivered(delivered, 2)
        assert delivered == [before, after]
    finally:
        await broker.stop()
