"""The hub used directly (no HTTP): indexing, broker subscriptions, gaps and shutdown."""

from __future__ import annotations

import asyncio

import pytest

from ssehub import Hub, MemoryBroker
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


async def test_gap_ends_the_streams_of_those_channels_only() -> None:
    """When the broker reports lost live events on a channel, its streams end (to resync); others go on."""
    async with (
        Hub(make_settings()) as hub,
        hub.subscribe(["a:1"]) as plain,
        hub.subscribe(["a:1"], filters={"download_id": "4"}) as filtered,
        hub.subscribe(["b:2"]) as other,
    ):
        hub._on_gap(["a:1", "never:subscribed"])
        assert plain.connection.close_reason == "resync"
        assert filtered.connection.close_reason == "resync"
        assert not other.connection.closed


async def test_broker_subscriptions_follow_local_subscribers() -> None:
    """The broker is subscribed to a channel while it has local subscribers, and released after the last leaves."""
    broker = MemoryBroker()
    async with Hub(make_settings(), broker=broker) as hub:
        async with hub.subscribe(["a:1", "b:2"]):
            async with hub.subscribe(["a:1"]):
                assert broker._subscribed == {"a:1", "b:2"}
            assert broker._subscribed == {"a:1", "b:2"}
        async with asyncio.timeout(2):
            while broker._subscribed:
                await asyncio.sleep(0.01)
        assert hub.subscribers_per_channel() == {}
        assert hub.active_connections == 0


async def test_close_ends_streams_and_refuses_new_ones() -> None:
    """Closing the hub ends open streams as a shutdown and refuses new subscriptions and publishes."""
    from ssehub import HubNotRunningError

    hub = Hub(make_settings())
    async with hub, hub.subscribe(["a:1"]) as sub:
        hub.end_streams()
        assert sub.connection.close_reason == "shutdown"
        with pytest.raises(HubNotRunningError):
            async with hub.subscribe(["a:1"]):
                pass
    with pytest.raises(HubNotRunningError):
        await hub.publish("a:1", "e", 1)
