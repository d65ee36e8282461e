"""Fixtures of the Redis Cluster tests: a real 3-master cluster (per session), hubs, channels on every shard."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ssehub.brokers._cluster_layout import ClusterLayout
from ssehub.brokers._shard_ids import ShardEvent
from ssehub.brokers.cluster import ClusterBroker
from ssehub.events import Event, EventId
from tests.brokers.conftest import Harness
from tests.cluster_server import REDIS_CLI, SKIP_REASON, LocalCluster, local_cluster
from tests.redis_server import REDIS_SERVER, free_port

ROOT = Path(__file__).resolve().parents[2]

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
    with local_cluster(masters=3) as cluster:
        yield cluster


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    """A 3-master cluster of this test's own (for tests that move slots)."""
    require_cluster_tools()
    with local_cluster(masters=3) as cluster:
        yield cluster


def assert_shard_orders(events: Sequence[Event]) -> None:
    """The events come from the three shards of a fresh cluster, each shard's ids strictly growing."""
    per_shard: dict[int, list[EventId]] = {}
    for event in events:
        assert isinstance(event, ShardEvent)
        per_shard.setdefault(event.shard, []).append(event.id)
    assert sorted(per_shard) == [0, 5461, 10923]
    for ids in per_shard.values():
        assert ids == sorted(ids)
        assert len(set(ids)) == len(ids)


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
        options.setdefault("socket_timeout", 3.0)
        broker = ClusterBroker(redis_cluster.url, connect_timeout=3.0, **options)
        harness = Harness(broker)
        await broker.start(harness.deliver)
        harnesses.append(harness)
        return harness

    try:
        yield make
    finally:
        for harness in harnesses:
            await harness.broker.stop()


@dataclass
class HubProcess:
    """One ``python -m ssehub serve`` process on a free port."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def api(self) -> str:
        """The API base URL."""
        return f"http://127.0.0.1:{self.port}/api/v1/events"

    def kill(self) -> None:
        """SIGKILL the process (a crashed node) and reap it, by PID."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time; always reaped."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def spawn_hub(broker_url: str, workdir: Path, extra_env: dict[str, str] | None = None) -> HubProcess:
    """Start a hub process on ``broker_url`` (not yet waited for: see ``wait_healthy``)."""
    port = free_port()
    log = workdir / f"hub-{port}.log"
    env = {
        **os.environ,
        "SSEHUB_BROKER_URL": broker_url,
        "SSEHUB_LOG_LEVEL": "warning",
        "SSEHUB_MAX_CONNECTIONS": "5000",
        "PYTHONPATH": str(ROOT),
        **(extra_env or {}),
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ssehub", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return HubProcess(process, port, log)


def wait_healthy(hub: HubProcess, within: float = 30.0) -> None:
    """Wait until the hub answers /health with a connected broker."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if hub.process.poll() is not None:
            raise RuntimeError(f"hub exited with {hub.process.returncode}: {hub.log.read_text()[-2000:]}")
        try:
            response = httpx.get(hub.api + "/health", timeout=1.0)
            if response.status_code == 200 and response.json()["broker"]["connected"]:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"hub on port {hub.port} not healthy within {within}s: {hub.log.read_text()[-2000:]}")


@pytest.fixture
def start_hubs(tmp_path: Path) -> Iterator[Callable[..., list[HubProcess]]]:
    """Start hub processes on a broker URL, wait until healthy; all stopped at the end of the test."""
    hubs: list[HubProcess] = []

    def start(broker_url: str, count: int, prefix: str = "ssehub") -> list[HubProcess]:
        started = [spawn_hub(broker_url, tmp_path, {"SSEHUB_REDIS_PREFIX": prefix}) for _ in range(count)]
        hubs.extend(started)
        for hub in started:
            wait_healthy(hub)
        return started

    try:
        yield start
    finally:
        for hub in hubs:
            hub.stop()
