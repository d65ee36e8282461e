"""Publisher and AsyncPublisher on a real 3-master Redis Cluster: the broker's script, ids and notifications."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from ssehub.brokers._cluster_layout import ClusterLayout
from ssehub.brokers._shard_ids import ShardEvent, ShardVector
from ssehub.events import EventId
from ssehub.exceptions import BrokerUnavailableError, ChannelLimitError, InvalidValueError, PublishManyError
from ssehub.publisher import AsyncPublisher, Publisher
from ssehub.testing import open_stream
from tests.cluster.conftest import ROOT, HubProcess, MakeClusterBroker, assert_shard_orders, channels_per_shard
from tests.cluster.test_end_to_end import by_channel, collect
from tests.cluster_server import LocalCluster
from tests.redis_server import free_port
from tests.redis_server import redis_server as plain_redis_server

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

#: A worker process: publishes the JSON list of [channel, event, data] it is given with ``Publisher``, one by
#: one or with ``publish_many``, and prints the ids as JSON.
WORKER = """
import json, sys
from ssehub import Publisher
url, prefix, mode, events = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
with Publisher.from_url(url, prefix=prefix, socket_timeout=5.0, connect_timeout=5.0) as publisher:
    if mode == "many":
        ids = publisher.publish_many([tuple(item) for item in events])
    else:
        ids = [publisher.publish(channel, event, data) for channel, event, data in events]
print(json.dumps(ids))
"""


def worker_publish(url: str, prefix: str, events: list[tuple[str, str, Any]], mode: str = "one") -> list[str]:
    """Run WORKER in its own process (ssehub from this tree, as a Celery or RQ worker would import it)."""
    done = subprocess.run(
        [sys.executable, "-c", WORKER, url, prefix, mode, json.dumps(events)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    ids = json.loads(done.stdout)
    assert isinstance(ids, list)
    return [str(event_id) for event_id in ids]


def numbered(names: list[str], numbers: range) -> list[tuple[str, str, Any]]:
    """Events ``n`` with data ``{"c": channel, "i": i}``, channels interleaved."""
    return [(name, "n", {"c": name, "i": i}) for i in numbers for name in names]


@pytest.fixture
async def async_publisher(redis_cluster: LocalCluster, prefix: str) -> AsyncIterator[AsyncPublisher]:
    """An AsyncPublisher on the session cluster with the test's prefix."""
    async with AsyncPublisher.from_url(redis_cluster.url, prefix=prefix, socket_timeout=5.0) as publisher:
        yield publisher


async def test_worker_and_async_publishers_reach_a_hub_stream_in_channel_order(
    redis_cluster: LocalCluster,
    prefix: str,
    start_hubs: Callable[..., list[HubProcess]],
    async_publisher: AsyncPublisher,
) -> None:
    """Events from a Publisher in a worker process and from an AsyncPublisher, on channels of all three shards,
    reach a stream of a hub process on the cluster once each, in publish order per channel."""
    (hub,) = start_hubs(redis_cluster.url, 1, prefix)
    names = [name for group in channels_per_shard(prefix, 2) for name in group]
    async with (
        httpx.AsyncClient(timeout=10.0) as client,
        open_stream(client, hub.api + "/stream?channels=" + ",".join(names)) as stream,
    ):
        assert (await stream.next_event()).event == "connected"
        worker_ids = worker_publish(redis_cluster.url, prefix, numbered(names, range(5)))
        async_ids = [await async_publisher.publish(c, e, d) for c, e, d in numbered(names, range(5, 10))]
        received = await collect(stream, 10 * len(names))
        with pytest.raises(TimeoutError):
            await stream.next_event(0.5)
    assert by_channel(received) == {name: list(range(10)) for name in names}
    assert len({event.id for event in received}) == len(received)
    # The ids the publishers return are the events' ids in their shards' orders, as POST /publish answers.
    for event_id in worker_ids + async_ids:
        EventId.parse(event_id)
    assert all(ShardVector.parse(received[-1].id).get(anchor) for anchor in (0, 5461, 10923))


async def test_publisher_events_are_the_brokers_events(
    redis_cluster: LocalCluster, prefix: str, make_cluster_broker: MakeClusterBroker, async_publisher: AsyncPublisher
) -> None:
    """A ClusterBroker receives publisher events live with the returned ids, on the shard of their channel's slot,
    stored in history, exactly like its own publishes."""
    harness = await make_cluster_broker()
    broker = harness.broker
    names = [group[0] for group in channels_per_shard(prefix, 1)]
    for name in names:
        await broker.subscribe(name)
    start = await broker.position()
    own = [await broker.publish(name, "n", json.dumps({"c": name, "i": 0})) for name in names]
    with Publisher.from_url(redis_cluster.url, prefix=prefix) as publisher:
        sync_ids = [publisher.publish(c, e, d) for c, e, d in numbered(names, range(1, 3))]
    async_ids = [await async_publisher.publish(c, e, d) for c, e, d in numbered(names, range(3, 5))]
    delivered = await harness.wait_for(5 * len(names))
    published = list(zip(sync_ids + async_ids, numbered(names, range(1, 5)), strict=True))
    for name in names:  # shards are delivered in their own orders: compare per channel
        assert [str(e.id) for e in delivered if e.channel == name][1:] == [i for i, (c, _, _) in published if c == name]
    shards = {event.channel: event.shard for event in own if isinstance(event, ShardEvent)}
    assert sorted(shards.values()) == [0, 5461, 10923]
    for event in delivered:
        assert isinstance(event, ShardEvent)
        assert event.shard == shards[event.channel]
        assert json.loads(event.data)["c"] == event.channel
    replay = await broker.read_after(names, start, 100)
    assert sorted((e.channel, e.id) for e in replay.events) == sorted((e.channel, e.id) for e in delivered)
    assert replay.expired == []


async def test_resume_after_publisher_events_is_exact(
    redis_cluster: LocalCluster,
    prefix: str,
    start_hubs: Callable[..., list[HubProcess]],
    async_publisher: AsyncPublisher,
) -> None:
    """A stream on three shards' channels drops after publisher events; more come from a worker's publish_many
    and an AsyncPublisher; resuming with its Last-Event-ID on another hub delivers exactly the missed ones."""
    first, second = start_hubs(redis_cluster.url, 2, prefix)
    names = [group[0] for group in channels_per_shard(prefix, 1)]
    query = "/stream?channels=" + ",".join(names)
    async with httpx.AsyncClient(timeout=10.0) as client:
        async with open_stream(client, first.api + query) as stream:
            assert (await stream.next_event()).event == "connected"
            await async_publisher.publish_many(numbered(names, range(3)))
            before = await collect(stream, 9)
        worker_publish(redis_cluster.url, prefix, numbered(names, range(3, 6)), mode="many")
        for channel, event, data in numbered(names, range(6, 8)):
            await async_publisher.publish(channel, event, data)
        async with open_stream(client, second.api + query, headers={"Last-Event-ID": before[-1].id}) as stream:
            connected = await stream.next_event()
            assert json.loads(connected.data)["resumed"] is True
            missed = await collect(stream, 15)
            await async_publisher.publish_many(numbered(names, range(8, 9)))
            live = await collect(stream, 3)
            with pytest.raises(TimeoutError):
                await stream.next_event(0.5)
    assert by_channel(before) == {name: [0, 1, 2] for name in names}
    assert by_channel(missed) == {name: [3, 4, 5, 6, 7] for name in names}
    assert by_channel(live) == {name: [8] for name in names}


async def test_publish_many_across_shards_keeps_channel_order_beyond_one_round_trip(
    redis_cluster: LocalCluster, prefix: str, make_cluster_broker: MakeClusterBroker, async_publisher: AsyncPublisher
) -> None:
    """publish_many of 1,200 events over channels of three shards (more than one pipeline per shard), sync and
    async, stores and delivers every event once, each channel in the order given, each shard's ids growing."""
    harness = await make_cluster_broker()
    names = [name for group in channels_per_shard(prefix, 2) for name in group]
    for name in names:
        await harness.broker.subscribe(name)
    with Publisher.from_url(redis_cluster.url, prefix=prefix) as publisher:
        sync_ids = publisher.publish_many(numbered(names, range(100)))
    async_ids = await async_publisher.publish_many(numbered(names, range(100, 200)))
    assert await async_publisher.publish_many([]) == []
    delivered = await harness.wait_for(200 * len(names), within=20)
    assert [str(event.id) for event in delivered if event.channel == names[0]] == [
        event_id
        for event_id, (channel, _e, _d) in zip(sync_ids + async_ids, numbered(names, range(200)), strict=True)
        if channel == names[0]
    ]
    for name in names:
        assert [json.loads(e.data)["i"] for e in delivered if e.channel == name] == list(range(200))
    assert_shard_orders(delivered)


async def test_a_refused_event_of_publish_many_fails_on_its_own(redis_cluster: LocalCluster, prefix: str) -> None:
    """With one channel allowed per shard, publish_many stores every event of the first channels and reports a
    ChannelLimitError for each event of the channel beyond the limit, as on plain Redis."""
    (first, extra), (second, _), (third, _) = channels_per_shard(prefix, 2)
    events = [(first, "n", 1), (extra, "n", 2), (second, "n", 3), (extra, "n", 4), (third, "n", 5), (first, "n", 6)]
    async with AsyncPublisher.from_url(redis_cluster.url, prefix=prefix, max_channels=1) as publisher:
        with pytest.raises(PublishManyError) as refused:
            await publisher.publish_many(events)
        with pytest.raises(ChannelLimitError):
            await publisher.publish(extra, "n", 7)
    outcomes = refused.value.outcomes
    assert [type(outcome) for outcome in outcomes] == [str, ChannelLimitError, str, ChannelLimitError, str, str]
    assert EventId.parse(str(outcomes[5])) > EventId.parse(str(outcomes[0]))


async def test_bad_input_gives_the_same_errors_as_on_plain_redis(
    redis_cluster: LocalCluster, prefix: str, async_publisher: AsyncPublisher
) -> None:
    """Invalid or oversized channel names, event types and data raise the same InvalidValueError (code and
    message) on a cluster as on one Redis, before anything is sent."""
    long_channel, long_event = "c" * 129, "e" * 65
    bad: list[tuple[str, str, Any]] = [
        ("bad channel", "n", 1),
        (long_channel, "n", 1),
        ("ok", long_event, 1),
        ("ok", "bad\nevent", 1),
        ("ok", "n", float("nan")),
        ("ok", "n", object()),
    ]
    with plain_redis_server() as server:
        for channel, event, data in bad:
            errors = []
            async with AsyncPublisher.from_url(server.url, prefix=prefix) as plain:
                for publisher in (plain, async_publisher):
                    with pytest.raises(InvalidValueError) as refused:
                        await publisher.publish(channel, event, data)
                    errors.append((refused.value.code, str(refused.value)))
                    with pytest.raises(InvalidValueError) as refused_many:
                        await publisher.publish_many([("ok", "n", 1), (channel, event, data)])
                    errors.append((refused_many.value.code, str(refused_many.value)))
            with (
                Publisher.from_url(server.url, prefix=prefix) as plain_sync,
                Publisher.from_url(redis_cluster.url, prefix=prefix) as cluster_sync,
            ):
                for publisher_sync in (plain_sync, cluster_sync):
                    with pytest.raises(InvalidValueError) as refused_sync:
                        publisher_sync.publish(channel, event, data)
                    errors.append((refused_sync.value.code, str(refused_sync.value)))
            assert len(set(errors)) == 1, errors
    layout = ClusterLayout(prefix)
    with redis.RedisCluster(host="127.0.0.1", port=redis_cluster.nodes[0].port) as admin:
        assert admin.exists(layout.stream("ok")) == 0  # a refused publish_many sent nothing


@contextlib.contextmanager
def bulk_limit(ports: list[int], limit: str) -> Iterator[None]:
    """Lower ``proto-max-bulk-len`` on these servers (1 MiB is the least Redis accepts), restored on exit."""
    admins = [redis.Redis(port=port, decode_responses=True) for port in ports]
    before = [str(admin.config_get("proto-max-bulk-len")["proto-max-bulk-len"]) for admin in admins]
    try:
        for admin in admins:
            admin.config_set("proto-max-bulk-len", limit)
        yield
    finally:
        for admin, value in zip(admins, before, strict=True):
            admin.config_set("proto-max-bulk-len", value)
            admin.close()


async def test_a_payload_redis_refuses_fails_alike_and_the_publisher_goes_on(
    redis_cluster: LocalCluster, prefix: str, async_publisher: AsyncPublisher
) -> None:
    """A payload over Redis's bulk limit raises BrokerUnavailableError from the publishers on one Redis and on a
    cluster alike (they have no size limit of their own); nothing is stored and a blocking publisher's next
    publish works."""
    (name,), _, _ = channels_per_shard(prefix, 1)
    huge = "x" * (1024 * 1024 + 10)
    with plain_redis_server() as server, bulk_limit([server.port, *redis_cluster.master_ports()], "1mb"):
        with (
            Publisher.from_url(server.url, prefix=prefix) as plain,
            Publisher.from_url(redis_cluster.url, prefix=prefix) as cluster,
        ):
            for publisher in (plain, cluster):
                with pytest.raises(BrokerUnavailableError):
                    publisher.publish(name, "n", huge)
                with pytest.raises(PublishManyError) as refused:
                    publisher.publish_many([(name, "n", huge)])
                assert [type(outcome) for outcome in refused.value.outcomes] == [BrokerUnavailableError]
                EventId.parse(publisher.publish(name, "n", "small"))
        async with AsyncPublisher.from_url(server.url, prefix=prefix) as plain_async:
            for async_one in (plain_async, async_publisher):
                with pytest.raises(BrokerUnavailableError):
                    await async_one.publish(name, "n", huge)
    with redis.RedisCluster(host="127.0.0.1", port=redis_cluster.nodes[0].port, decode_responses=True) as admin:
        stored = admin.xrange(ClusterLayout(prefix).stream(name))
    assert [fields["data"] for _id, fields in stored] == ['"small"']


async def test_a_master_that_lost_the_script_gets_it_again(
    redis_cluster: LocalCluster, prefix: str, async_publisher: AsyncPublisher
) -> None:
    """After SCRIPT FLUSH on every master (as after a restart), publishers that had loaded the script there load it
    again and publish, sync and async, each event once."""
    names = [group[0] for group in channels_per_shard(prefix, 1)]
    admins = [redis.Redis(port=port) for port in redis_cluster.master_ports()]
    try:
        with Publisher.from_url(redis_cluster.url, prefix=prefix) as publisher:
            assert len(await async_publisher.publish_many(numbered(names, range(1)))) == 3
            assert len(publisher.publish_many(numbered(names, range(1, 2)))) == 3
            for admin in admins:
                admin.script_flush()
            assert len(await async_publisher.publish_many(numbered(names, range(2, 3)))) == 3
            for admin in admins:
                admin.script_flush()
            EventId.parse(publisher.publish(names[0], "n", {"c": names[0], "i": 3}))
            assert len(publisher.publish_many(numbered(names[1:], range(3, 4)))) == 2
    finally:
        for admin in admins:
            admin.close()
    with redis.RedisCluster(host="127.0.0.1", port=redis_cluster.nodes[0].port, decode_responses=True) as cluster:
        for name in names:
            stored = cluster.xrange(ClusterLayout(prefix).stream(name))
            assert [json.loads(fields["data"])["i"] for _id, fields in stored] == [0, 1, 2, 3]


def test_an_unreachable_cluster_fails_within_the_timeouts() -> None:
    """With no node answering, publish raises BrokerUnavailableError and publish_many marks every event."""
    url = f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    with Publisher.from_url(url, socket_timeout=1.0, connect_timeout=1.0) as publisher:
        with pytest.raises(BrokerUnavailableError):
            publisher.publish("a", "n", 1)
        with pytest.raises(PublishManyError) as refused:
            publisher.publish_many([("a", "n", 1), ("b", "n", 2)])
    assert all(isinstance(outcome, BrokerUnavailableError) for outcome in refused.value.outcomes)


async def test_publishers_follow_a_slot_that_moved(own_cluster: LocalCluster) -> None:
    """A channel's slot moves to another master after the publishers learned the slot map: their next publish
    and publish_many find the new owner and store the events there, in order, with nothing lost."""
    prefix = "moved"
    (name,), _, _ = channels_per_shard(prefix, 1)
    slot = ClusterLayout(prefix).slot(name)
    with Publisher.from_url(own_cluster.url, prefix=prefix) as publisher:
        async with AsyncPublisher.from_url(own_cluster.url, prefix=prefix) as async_publisher:
            first = [publisher.publish(name, "n", 0), await async_publisher.publish(name, "n", 1)]
            target = next(port for port in own_cluster.master_ports() if port != own_cluster.master_of_slot(slot))
            own_cluster.migrate_slot(slot, target)
            assert own_cluster.master_of_slot(slot) == target
            after = [publisher.publish(name, "n", 2), *publisher.publish_many([(name, "n", 3), (name, "n", 4)])]
            after += await async_publisher.publish_many([(name, "n", 5), (name, "n", 6)])
    ids = [EventId.parse(event_id) for event_id in first + after]
    assert ids == sorted(ids)
    with redis.Redis(port=target, decode_responses=True) as node:
        stored = node.xrange(ClusterLayout(prefix).stream(name))
    assert [fields["data"] for _id, fields in stored] == [str(i) for i in range(7)]
