"""Broker metrics on Redis: the connected gauge and the reconnect counter follow a Redis restart; gaps count."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ssehub import Hub
from ssehub.brokers.redis import RedisBroker
from ssehub.metrics import Metrics
from tests.conftest import make_settings
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


def _values(metrics: Metrics) -> dict[str, float]:
    """Unlabelled samples of a scrape, by name."""
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
        if not sample.labels
    }


async def test_broker_reconnects_connected_gauge_and_gaps(redis_server: RedisServer) -> None:
    """A Redis restart shows as ssehub_broker_connected 0 then 1 and a reconnect; a reported gap is counted per
    channel."""
    settings = make_settings(broker_url=redis_server.url)
    broker = RedisBroker(
        redis_server.url, socket_timeout=1.0, connect_timeout=1.0, reconnect_max_delay=0.5, ping_interval=0.5
    )
    hub = Hub(settings, broker=broker)
    metrics = Metrics(hub)
    async with hub, metrics:
        async with asyncio.timeout(10):
            while _values(metrics).get("ssehub_broker_connected") != 1:
                await asyncio.sleep(0.05)
        assert _values(metrics)["ssehub_broker_reconnects_total"] == 0
        await asyncio.to_thread(redis_server.kill)
        async with asyncio.timeout(10):
            while _values(metrics).get("ssehub_broker_connected") != 0:
                await asyncio.sleep(0.05)
        await asyncio.to_thread(redis_server.start)
        async with asyncio.timeout(20):
            while _values(metrics).get("ssehub_broker_connected") != 1:
                await asyncio.sleep(0.05)
        assert _values(metrics)["ssehub_broker_reconnects_total"] >= 1
        hub._on_gap(["jobs:1", "jobs:2"])  # what the broker calls when live delivery lost trimmed events
        assert _values(metrics)["ssehub_broker_gaps_total"] == 2
