"""Global order under concurrency: several brokers and publishers on one Redis, one sequence of ids."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import pytest

from ssehub.brokers.redis import RedisBroker
from ssehub.events import Event
from ssehub.publisher import AsyncPublisher
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


async def test_concurrent_publishers_yield_one_order_seen_alike_by_every_broker(redis_server: RedisServer) -> None:
    """Concurrent publishes from two brokers and a publisher get unique ids that every broker delivers in order."""
    received: list[list[Event]] = [[], []]
    brokers = [RedisBroker(redis_server.url, socket_timeout=2.0, connect_timeout=2.0) for _ in received]
    for broker, sink in zip(brokers, received, strict=True):
        await broker.start(sink.append)
    try:
        for broker in brokers:
            for name in ("a", "b", "c"):
                await broker.subscribe(name)
        async with AsyncPublisher.from_url(redis_server.url) as publisher:
            jobs: list[Coroutine[Any, Any, Event | str]] = []
            for i in range(150):
                channel = "abc"[i % 3]
                jobs.append(brokers[i % 2].publish(channel, "e", str(i)))
                jobs.append(publisher.publish(channel, "p", i))
            results = await asyncio.gather(*jobs)
        ids = sorted(str(r.id) if isinstance(r, Event) else r for r in results)
        assert len(set(ids)) == 300
        deadline = time.monotonic() + 10
        while any(len(sink) < 300 for sink in received):
            assert time.monotonic() < deadline, [len(sink) for sink in received]
            await asyncio.sleep(0.01)
        for sink in received:
            delivered_ids = [event.id for event in sink]
            assert delivered_ids == sorted(delivered_ids)
            assert sorted(str(i) for i in delivered_ids) == ids
        assert received[0] == received[1]
    finally:
        for broker in brokers:
            await broker.stop()
