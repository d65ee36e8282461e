"""Fixtures of the Redis Cluster tests: a real 3-master cluster (per session), hubs, channels on every shard."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from ssehub.brokers._cluster_layout import ClusterLayout
from ssehub.brokers.cluster import ClusterBroker
from tests.brokers.conftest import Harness
from tests.cluster_server import REDIS_CLI, SKIP_REASON, LocalCluster
from tests.redis_server import REDIS_SERVER

_prefixes = itertools.count()
#: The slot ranges ``redis-cli --cluster create`` gives three masters.
THREE_SHARDS = ((0, 5461), (5461, 10923), (10923, 16384))

MakeClusterBroker = Callable[..., Awaitable[Harness]]


def channels_per_shard(prefix: str, per_shard: int, stem: str = "room") -> list[list[str]]:
    """``per_shard`` channel names on each of the three shards of a fresh 3-master cluster."""
    layout = ClusterLayout(prefix)
    found: list[list[str]] = [[] for _ in THREE_SHARDS]
    for n in itertools.count():
        name = f"{stem}:{n}"
        slot = layout.slot(name)
        shard = next(i for i, (low, high) in enumerate(THREE_SHARDS) if low <= slot < high)
        if len(found[shard]) < per_shard:
            found[shard].append(name)
        if all(len(names) == per_shard for names in found):
            return found
    raise AssertionError("unreachable")


def require_cluster_tools() -> None:
    """Skip unless redis-server and redis-cli are installed."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip(SKIP_REASON)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """One 3-master cluster for the session; tests keep apart by key prefix."""
    require_cluster_tools()
    cluster = LocalCluster(masters=3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own (so tests on the shared cluster never see each other's data)."""
    return f"t{next(_prefixes)}"


@pytest.fixture
async def make_cluster_broker(redis_cluster: LocalCluster, prefix: str) -> AsyncIterator[MakeClusterBroker]:
    """Build and start cluster brokers on the session cluster with the test's prefix; stopped at the end."""
    harnesses: list[Harness] = []

    async def make(**options: Any) -> Harness:
        options.setdefault("prefix", prefix)
        broker = ClusterBroker(redis_cluster.url, socket_timeout=3.0, connect_timeout=3.0, **options)
        harness = Harness(broker)
        await broker.start(harness.deliver)
        harnesses.append(harness)
        return harness

    try:
        yield make
    finally:
        for harness in harnesses:
            await harness.broker.stop()
