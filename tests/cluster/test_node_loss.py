"""The node-loss simulation (scripts/node_loss.py) at a small size: hubs killed, every client whole at the end."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.cluster_server import LocalCluster
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "node_loss.py"


def load_simulation() -> ModuleType:
    """Import scripts/node_loss.py as a module."""
    spec = importlib.util.spec_from_file_location("node_loss", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["node_loss"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


async def test_killed_cluster_hubs_lose_no_event_of_any_client(
    redis_cluster: LocalCluster, prefix: str, tmp_path: Path
) -> None:
    """3 hubs on a 3-shard cluster, 60 streams, 2 hubs killed and restarted: every client ends with every
    acknowledged event of its channels exactly once, in order, and no reset."""
    simulation = load_simulation()
    config = simulation.Config(hubs=3, streams=60, channels=12, kills=2, duration=8.0, rate=40.0, prefix=prefix)
    report = await simulation.simulate(config, redis_cluster.url, tmp_path)
    assert report.kills == 2
    assert report.published > 200
    assert report.reconnects > 0
    assert report.errors == []
    assert (report.missing, report.duplicates, report.out_of_order, report.unexpected, report.resets) == (0, 0, 0, 0, 0)
    assert report.ok


async def test_killed_hubs_on_one_redis_lose_no_event_of_any_client(tmp_path: Path) -> None:
    """The same on one Redis server: 3 hubs, 60 streams, 2 kills, nothing lost, duplicated or reordered."""
    from tests.redis_server import REDIS_SERVER, SKIP_REASON

    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    simulation = load_simulation()
    server = RedisServer()
    try:
        server.start()
        config = simulation.Config(hubs=3, streams=60, channels=12, kills=2, duration=8.0, rate=40.0)
        report = await simulation.simulate(config, server.url, tmp_path)
    finally:
        server.close()
    assert report.kills == 2
    assert report.reconnects > 0
    assert report.ok, report
