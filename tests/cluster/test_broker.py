"""The cluster broker against a real 3-master Redis Cluster: per-shard orders, live delivery, exact reads."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio

from ssehub.brokers._shard_ids import ShardEvent, ShardVector
from ssehub.brokers.cluster import ClusterBroker
from ssehub.events import EventId
from ssehub.exceptions import ChannelLimitError, InvalidEventIdError
from tests.cluster.conftest import MakeClusterBroker, assert_shard_orders, channels_per_shard
from tests.cluster_server import LocalCluster

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


async def test_ids_grow_per_shard_and_channels_spread_over_all_shards(
    make_cluster_broker: MakeClusterBroker, prefix: str
) -> None:
    """Events of channels on three shards get ids from three orders, each strictly growing."""
    broker = (await make_cluster_broker()).broker
    names = [name for group in channels_per_shard(prefix, 2) for name in group]
    events = [await broker.publish(name, "e", str(i)) for i in range(4) for name in names]
    assert_shard_orders(events)


async def test_live_events_arrive_in_each_shards_order_with_growing_positions(
    make_cluster_broker: MakeClusterBroker, prefix: str
) -> None:
    """Subscribed channels on every shard are delivered once each, per shard in id order, each stamped with
    the hub's vector, which only grows."""
    harness = await make_cluster_broker()
    broker = harness.broker
    names = [name for group in channels_per_shard(prefix, 2) for name in group]
    for name in names:
        await broker.subscribe(name)
    published = [await broker.publish(name, "e", f'"{i}"') for i in range(5) for name in names]
    delivered = await harness.wait_for(len(published))
    assert sorted(delivered, key=lambda e: (e.channel, e.id)) == sorted(published, key=lambda e: (e.channel, e.id))
    for name in names:
        assert [e for e in delivered if e.channel == name] == [e for e in published if e.channel == name]
    previous: ShardVector | None = None
    for event in delivered:
        assert isinstance(event, ShardEvent)
        vector = ShardVector.parse(event.position)
        assert vector.get(event.shard) == event.id
        if previous is not None:
            assert all(vector.get(anchor) is not None and vector.get(anchor) >= old for anchor, old in previous.items())  # type: ignore[operator]
        previous = vector
    await asyncio.sleep(0.1)
    assert len(harness.delivered) == len(published)


async def test_read_after_any_delivered_position_returns_exactly_the_rest(
    make_cluster_broker: MakeClusterBroker, prefix: str
) -> None:
    """From the position of every delivered event, read_after returns exactly the events delivered after it
    on the stream's channels (none twice, none missing), and a cutoff covering all of them."""
    harness = await make_cluster_broker()
    broker = harness.broker
    groups = channels_per_shard(prefix, 2)
    names = [name for group in groups for name in group]
    for name in names:
        await broker.subscribe(name)
    start = await broker.position()
    published = [await broker.publish(name, "e", f'"{i}"') for i in range(4) for name in names]
    delivered = await harness.wait_for(len(published))
    stream_channels = [groups[0][0], groups[1][0], groups[2][1]]
    wanted = [event for event in delivered if event.channel in stream_channels]
    everything = await broker.read_after(stream_channels, start, limit=1000)
    assert {(e.channel, e.id) for e in everything.events} == {(e.channel, e.id) for e in wanted}
    assert everything.expired == []
    for index, event in enumerate(delivered):
        assert isinstance(event, ShardEvent)
        replay = await broker.read_after(stream_channels, broker.parse_position(event.position), limit=1000)
        after = [e for e in delivered[index + 1 :] if e.channel in stream_channels]
        assert sorted((e.channel, e.id) for e in replay.events) == sorted((e.channel, e.id) for e in after)
        assert replay.expired == []
        assert all(replay.cutoff.covers(e) for e in wanted)


async def test_replayed_events_carry_positions_that_resume_exactly(
    make_cluster_broker: MakeClusterBroker, prefix: str
) -> None:
    """A client that drops in the middle of a replay resumes from the replayed event's position without
    duplicates or gaps."""
    broker = (await make_cluster_broker()).broker
    names = [group[0] for group in channels_per_shard(prefix, 1)]
    start = await broker.position()
    published = [await broker.publish(name, "e", f'"{i}"') for i in range(3) for name in names]
    replay = await broker.read_after(names, start, limit=1000)
    middle = replay.events[4]
    assert isinstance(middle, ShardEvent)
    rest = await broker.read_after(names, broker.parse_position(middle.position), limit=1000)
    assert [(e.channel, e.id) for e in replay.events[:5] + rest.events] == [(e.channel, e.id) for e in replay.events]
    assert sorted((e.channel, e.id) for e in replay.events) == sorted((e.channel, e.id) for e in published)


async def test_a_position_without_the_channels_shard_or_above_its_head_is_expired(
    make_cluster_broker: MakeClusterBroker, prefix: str
) -> None:
    """A vector lacking a channel's shard, or naming an id its shard never issued, expires that channel only."""
    broker = (await make_cluster_broker()).broker
    names = [group[0] for group in channels_per_shard(prefix, 1)]
    for name in names:
        await broker.publish(name, "e", "1")
    now = await broker.position()
    assert isinstance(now, ShardVector)
    head = now.get(0)
    assert head is not None
    partial = ShardVector({anchor: event_id for anchor, event_id in now.items() if anchor != 5461})
    replay = await broker.read_after(names, partial, limit=10)
    assert replay.expired == [names[1]]
    future = ShardVector({**dict(now.items()), 0: EventId(head.ms + 60_000, 0)})
    assert (await broker.read_after(names, future, limit=10)).expired == [names[0]]


async def test_trimmed_history_expires_only_older_positions(
    make_cluster_broker: MakeClusterBroker, prefix: str
) -> None:
    """A position older than a channel's retained history is expired; a position within it is not."""
    broker = (await make_cluster_broker(history_size=3)).broker
    name = channels_per_shard(prefix, 1)[2][0]
    start = await broker.position()
    assert isinstance(start, ShardVector)
    events = [await broker.publish(name, "e", str(i)) for i in range(6)]
    assert (await broker.read_after([name], start, limit=10)).expired == [name]
    third = events[2]
    assert isinstance(third, ShardEvent)
    kept = start.merged({third.shard: third.id})
    replay = await broker.read_after([name], kept, limit=10)
    assert replay.expired == []
    assert replay.events == events[3:]


async def test_channel_limit_applies_per_shard(make_cluster_broker: MakeClusterBroker, prefix: str) -> None:
    """Beyond max_channels on one shard a new channel there is refused; other shards still accept theirs."""
    broker = (await make_cluster_broker(max_channels=2)).broker
    groups = channels_per_shard(prefix, 3)
    await broker.publish(groups[0][0], "e", "1")
    await broker.publish(groups[0][1], "e", "1")
    with pytest.raises(ChannelLimitError):
        await broker.publish(groups[0][2], "e", "1")
    await broker.publish(groups[1][0], "e", "1")
    await broker.publish(groups[0][0], "e", "2")


async def test_a_plain_event_id_is_not_a_cluster_position(make_cluster_broker: MakeClusterBroker) -> None:
    """A single-Redis id given to a cluster hub is refused as a position (the hub answers with a reset)."""
    broker = (await make_cluster_broker()).broker
    with pytest.raises(InvalidEventIdError):
        broker.parse_position("1764040000123-0")


async def test_one_pubsub_connection_per_shard_whatever_the_channels(
    redis_cluster: LocalCluster, make_cluster_broker: MakeClusterBroker, prefix: str
) -> None:
    """Subscribing 60 channels over three shards uses one sharded pub/sub connection per shard."""
    broker = (await make_cluster_broker()).broker
    assert isinstance(broker, ClusterBroker)
    for group in channels_per_shard(prefix, 20):
        for name in group:
            await broker.subscribe(name)
    for port in redis_cluster.master_ports():
        admin = redis.asyncio.Redis(port=port, socket_timeout=5)
        try:
            clients = await admin.client_list()
        finally:
            await admin.aclose()
        subscribed = [c for c in clients if int(c.get("ssub", 0)) > 0]
        assert len(subscribed) == 1
        assert int(subscribed[0]["ssub"]) == 20


async def test_stop_ends_delivery_and_tasks(make_cluster_broker: MakeClusterBroker, prefix: str) -> None:
    """After stop() nothing more is delivered and no reader task is left."""
    harness = await make_cluster_broker()
    broker = harness.broker
    name = channels_per_shard(prefix, 1)[1][0]
    await broker.subscribe(name)
    await broker.publish(name, "e", "1")
    await harness.wait_for(1)
    await broker.stop()
    assert [t for t in asyncio.all_tasks() if "ssehub-cluster" in t.get_name() and not t.done()] == []


async def test_idle_shard_connections_answer_pings_and_stay_up(
    make_cluster_broker: MakeClusterBroker, prefix: str
) -> None:
    """An idle shard connection is probed with PING and its PONG recognised: no reconnection over many probes."""
    harness = await make_cluster_broker(ping_interval=0.1, socket_timeout=1.0)
    broker = harness.broker
    await broker.subscribe(channels_per_shard(prefix, 1)[0][0])
    await asyncio.sleep(2.5)
    shards = broker.status().details["shards"]
    assert [shard["reconnects"] for shard in shards.values()] == [0, 0, 0]
    assert all(shard["connected"] for shard in shards.values())
