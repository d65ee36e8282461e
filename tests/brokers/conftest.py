"""Fixtures of the broker contract suite: the same tests against every broker (ids ``memory`` and ``redis``)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from ssehub.brokers.base import Broker
from ssehub.events import Event
from tests.redis_server import REDIS_SERVER, SKIP_REASON, RedisServer

_prefixes = itertools.count()


class Harness:
    """A started broker and the events its deliver callback received."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.delivered: list[Event] = []

    def deliver(self, event: Event) -> None:
        self.delivered.append(event)

    async def wait_for(self, count: int, within: float = 5.0) -> list[Event]:
        """Wait until ``count`` events were delivered (fails after ``within`` seconds)."""
        deadline = time.monotonic() + within
        while len(self.delivered) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} deliveries, got {len(self.delivered)}: {self.delivered}")
            await asyncio.sleep(0.005)
        return self.delivered


MakeBroker = Callable[..., Awaitable[Harness]]


@pytest.fixture(scope="session")
def contract_redis() -> Iterator[RedisServer]:
    """One redis-server for the contract suite; each broker gets its own key prefix."""
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(params=["memory", "redis"])
async def make_broker(request: pytest.FixtureRequest) -> AsyncIterator[MakeBroker]:
    """Build and start brokers of the parametrized kind; all are stopped at the end of the test."""
    kind: str = request.param
    harnesses: list[Harness] = []
    server: RedisServer | None = request.getfixturevalue("contract_redis") if kind == "redis" else None

    async def make(**options: Any) -> Harness:
        broker: Broker
        if kind == "memory":
            from ssehub.brokers.memory import MemoryBroker

            broker = MemoryBroker(**options)
        else:
            from ssehub.brokers.redis import RedisBroker

            assert server is not None
            options.setdefault("prefix", f"contract{next(_prefixes)}")
            broker = RedisBroker(server.url, socket_timeout=2.0, connect_timeout=2.0, **options)
        harness = Harness(broker)
        await broker.start(harness.deliver)
        harnesses.append(harness)
        return harness

    try:
        yield make
    finally:
        for harness in harnesses:
            await harness.broker.stop()
