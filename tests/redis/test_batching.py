"""Batched publishing and reading on Redis: one script call per loop iteration, whole batches to the hub.

Batching must not weaken what a single publish guarantees: every event is in history before anyone sees it
live, ids follow the order of the calls, and one event's failure leaves the others stored, in order.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio

from ssehub import create_app
from ssehub.brokers._redis_layout import MAX_BATCH, RedisLayout
from ssehub.brokers.redis import RedisBroker
from ssehub.events import Event, EventId
from ssehub.exceptions import (
    BrokerUnavailableError,
    ChannelLimitError,
    InvalidValueError,
    PublishManyError,
    SSEHubError,
)
from ssehub.publisher import AsyncPublisher, Publisher
from ssehub.testing import open_stream, running_server
from tests.conftest import make_settings
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


class Sink:
    """What a broker handed over: every event in order, and the batches that came through ``deliver_many``."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.batches: list[list[Event]] = []

    def deliver(self, event: Event) -> None:
        self.events.append(event)

    def deliver_many(self, events: Sequence[Event]) -> None:
        self.batches.append(list(events))
        self.events.extend(events)

    async def wait_for(self, count: int, within: float = 10.0) -> list[Event]:
        deadline = time.monotonic() + within
        while len(self.events) < count:
            assert time.monotonic() < deadline, f"expected {count} events, got {len(self.events)}"
            await asyncio.sleep(0.005)
        return self.events


async def _start(url: str, sink: Sink, **options: Any) -> RedisBroker:
    broker = RedisBroker(url, socket_timeout=2.0, connect_timeout=2.0, **options)
    broker.accept_batches(sink.deliver_many)
    await broker.start(sink.deliver)
    return broker


@pytest.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client on the test's Redis, for looking at what the scripts stored."""
    client = redis.asyncio.Redis(port=redis_server.port, socket_timeout=2, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def _script_calls(admin: redis.asyncio.Redis) -> int:
    stats = await admin.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))


async def test_concurrent_publishes_share_one_script_call_in_call_order(
    redis_server: RedisServer, admin: redis.asyncio.Redis
) -> None:
    """Publishes started in one loop iteration go to Redis in one script call, with ids in the order of the calls."""
    sink = Sink()
    broker = await _start(redis_server.url, sink)
    try:
        for name in ("a", "b"):
            await broker.subscribe(name)
        await broker.publish("a", "e", '"warm"')  # loads the script, so the count below is the batch alone
        calls_before = await _script_calls(admin)
        published = await asyncio.gather(*(broker.publish("ab"[i % 2], "e", str(i)) for i in range(60)))
        assert await _script_calls(admin) - calls_before == 1
        assert [event.data for event in published] == [str(i) for i in range(60)]
        ids = [event.id for event in published]
        assert ids == sorted(ids)
        assert len(set(ids)) == 60
        delivered = await sink.wait_for(61)
        assert delivered[1:] == published
    finally:
        await broker.stop()


async def test_an_event_seen_live_is_already_in_history(redis_server: RedisServer) -> None:
    """Every event of a batch that is delivered live can be read back from history at that moment."""
    sink = Sink()
    broker = await _start(redis_server.url, sink, history_size=500)
    reader = await _start(redis_server.url, Sink())
    try:
        await broker.subscribe("a")
        start = await reader.head()
        published = await asyncio.gather(*(broker.publish("a", "e", str(i)) for i in range(200)))
        checked = 0
        while checked < len(published):
            await sink.wait_for(checked + 1)
            seen = sink.events[checked:]
            history = await reader.read_since(["a"], start, limit=1000)
            stored = {event.id for event in history.events}
            assert all(event.id in stored for event in seen)
            checked += len(seen)
        assert sink.events == published
    finally:
        await reader.stop()
        await broker.stop()


async def test_a_refused_event_does_not_lose_or_reorder_the_rest_of_its_batch(
    redis_server: RedisServer, admin: redis.asyncio.Redis
) -> None:
    """In one batch, a channel over the limit and a Redis error fail only their own events; the others keep order."""
    sink = Sink()
    broker = await _start(redis_server.url, sink, max_channels=3, prefix="lim")
    try:
        for name in ("a", "b", "broken", "c"):
            await broker.subscribe(name)
        await broker.publish("a", "e", '"a0"')
        await broker.publish("b", "e", '"b0"')
        # A key of the wrong type makes XADD fail inside the script for that channel only.
        await admin.set(RedisLayout("lim").stream("broken"), "not a stream")
        await admin.zadd(RedisLayout("lim").channels, {"broken": int(time.time() * 1000)})
        jobs = [
            broker.publish("a", "e", '"a1"'),
            broker.publish("c", "e", '"c1"'),  # a fourth channel: over max_channels=3
            broker.publish("b", "e", '"b1"'),
            broker.publish("broken", "e", '"x"'),
            broker.publish("a", "e", '"a2"'),
        ]
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        assert isinstance(outcomes[1], ChannelLimitError)
        assert isinstance(outcomes[3], BrokerUnavailableError)
        assert "WRONGTYPE" in str(outcomes[3])
        kept = [outcome for outcome in outcomes if isinstance(outcome, Event)]
        assert [event.data for event in kept] == ['"a1"', '"b1"', '"a2"']
        assert [event.id for event in kept] == sorted(event.id for event in kept)
        delivered = await sink.wait_for(5)
        assert [event.data for event in delivered] == ['"a0"', '"b0"', '"a1"', '"b1"', '"a2"']
        history = await broker.read_since(["a", "b", "c"], delivered[1].id, limit=10)
        assert history.events == kept
    finally:
        await broker.stop()


async def test_reader_hands_runs_of_one_channel_to_the_hub_in_order(redis_server: RedisServer) -> None:
    """Notifications read together reach deliver_many as runs of one channel; all events arrive once, in order."""
    sink = Sink()
    broker = await _start(redis_server.url, sink)
    try:
        for name in ("a", "b"):
            await broker.subscribe(name)
        items = [("a" if i % 50 < 30 else "b", "e", i) for i in range(200)]
        async with AsyncPublisher.from_url(redis_server.url) as publisher:
            ids = await publisher.publish_many(items)
        delivered = await sink.wait_for(200)
        assert [str(event.id) for event in delivered] == ids
        assert [json.loads(event.data) for event in delivered] == list(range(200))
        assert all(len({event.channel for event in batch}) == 1 for batch in sink.batches)
        # One script call wrote all 200 notifications at once: the reader took more than one per wake-up.
        assert sink.batches
        assert max(len(batch) for batch in sink.batches) > 1
    finally:
        await broker.stop()


async def test_async_publish_many_keeps_order_across_script_calls(redis_server: RedisServer) -> None:
    """AsyncPublisher.publish_many of more than one batch returns increasing ids, delivered and stored in order."""
    sink = Sink()
    broker = await _start(redis_server.url, sink)
    try:
        await broker.subscribe("a")
        count = MAX_BATCH * 2 + 10
        async with AsyncPublisher.from_url(redis_server.url) as publisher:
            ids = await publisher.publish_many(("a", "n", {"i": i}) for i in range(count))
        parsed = [EventId.parse(text) for text in ids]
        assert parsed == sorted(parsed)
        assert len(set(parsed)) == count
        delivered = await sink.wait_for(count)
        assert [str(event.id) for event in delivered] == ids
        assert [json.loads(event.data)["i"] for event in delivered] == list(range(count))
    finally:
        await broker.stop()


async def test_publish_many_validates_everything_before_sending(redis_server: RedisServer) -> None:
    """One bad event in publish_many raises InvalidValueError and nothing of the list is stored."""
    broker = await _start(redis_server.url, Sink())
    try:
        head = await broker.head()
        async with AsyncPublisher.from_url(redis_server.url) as publisher:
            with pytest.raises(InvalidValueError):
                await publisher.publish_many([("a", "e", 1), ("a", "e", float("nan"))])
            with pytest.raises(InvalidValueError):
                await publisher.publish_many([("a", "e", 1), ("bad channel", "e", 1)])
        assert await broker.head() == head
        assert (await broker.read_since(["a"], head, limit=10)).events == []
    finally:
        await broker.stop()


def test_sync_publish_many_reports_each_refused_event(redis_server: RedisServer) -> None:
    """Publisher.publish_many stores the acceptable events in order and names the refused one in PublishManyError."""
    with Publisher.from_url(redis_server.url, max_channels=2) as publisher:
        assert len(publisher.publish_many([("a", "e", 0), ("b", "e", 0)])) == 2
        with pytest.raises(PublishManyError) as caught:
            publisher.publish_many([("a", "e", 1), ("c", "e", 1), ("b", "e", 1)])
        outcomes = caught.value.outcomes
        assert isinstance(outcomes[1], ChannelLimitError)
        first, third = outcomes[0], outcomes[2]
        assert isinstance(first, str)
        assert isinstance(third, str)
        assert EventId.parse(first) < EventId.parse(third)
        client = redis.Redis(port=redis_server.port, decode_responses=True)
        try:
            layout = RedisLayout()
            last_a: Any = client.xrevrange(layout.stream("a"), count=1)
            last_b: Any = client.xrevrange(layout.stream("b"), count=1)
            assert last_a[0][0] == first
            assert last_b[0][0] == third
            assert not client.exists(layout.stream("c"))
        finally:
            client.close()


def test_sync_publish_many_to_unreachable_redis_marks_every_event(redis_server: RedisServer) -> None:
    """With Redis gone, publish_many raises PublishManyError whose every outcome is BrokerUnavailableError."""
    redis_server.kill()
    publisher = Publisher.from_url(redis_server.url, socket_timeout=1.0, connect_timeout=1.0)
    with publisher, pytest.raises(PublishManyError) as caught:
        publisher.publish_many([("a", "e", 1), ("b", "e", 2)])
    assert all(isinstance(outcome, BrokerUnavailableError) for outcome in caught.value.outcomes)
    assert isinstance(caught.value, SSEHubError)


async def test_streams_on_a_redis_hub_get_batched_events_in_order(redis_server: RedisServer) -> None:
    """Through a real server, a plain, a filtered and a resumed stream each get exactly their events in order."""
    settings = make_settings(broker_url=redis_server.url)
    app = create_app(settings)
    with running_server(app) as base:
        api = f"{base}{settings.prefix}"
        async with httpx.AsyncClient(timeout=10) as client, AsyncPublisher.from_url(redis_server.url) as publisher:
            first = await publisher.publish("room", "n", {"i": -1, "k": "x"})
            async with (
                open_stream(client, f"{api}/stream?channels=room") as plain,
                open_stream(client, f"{api}/stream?channels=room&k=y") as filtered,
                open_stream(client, f"{api}/stream?channels=room", headers={"Last-Event-ID": first}) as resumed,
            ):
                for stream in (plain, filtered, resumed):
                    assert (await stream.next_event()).event == "connected"
                items = [("room", "n", {"i": i, "k": "xy"[i % 2]}) for i in range(300)]
                ids = await publisher.publish_many(items)
                got_plain = await plain.take(300)
                got_filtered = await filtered.take(150)
                got_resumed = await resumed.take(300)
    assert [m.id for m in got_plain] == ids
    assert [m.id for m in got_resumed] == ids
    assert [m.id for m in got_filtered] == ids[1::2]
    assert [json.loads(m.data)["i"] for m in got_filtered] == list(range(1, 300, 2))


async def test_more_concurrent_publishes_than_one_call_holds_all_succeed(redis_server: RedisServer) -> None:
    """Over MAX_BATCH publishes at once go out in several calls; each caller gets its own event, none lost."""
    sink = Sink()
    broker = await _start(redis_server.url, sink)
    try:
        await broker.subscribe("a")
        count = MAX_BATCH * 2 + 7
        published = await asyncio.gather(*(broker.publish("a", "e", str(i)) for i in range(count)))
        assert [event.data for event in published] == [str(i) for i in range(count)]
        assert len({event.id for event in published}) == count
        delivered = await sink.wait_for(count)
        assert sorted(event.id for event in delivered) == sorted(event.id for event in published)
        assert [event.id for event in delivered] == sorted(event.id for event in delivered)
    finally:
        await broker.stop()


async def test_stop_fails_queued_publishes_instead_of_leaving_them_waiting(redis_server: RedisServer) -> None:
    """Publishes queued when the broker stops end with BrokerUnavailableError, not a wait without end."""
    broker = await _start(redis_server.url, Sink())
    jobs = [asyncio.ensure_future(broker.publish("a", "e", str(i))) for i in range(5)]
    await asyncio.sleep(0)  # they are queued; their batch has not reached Redis yet
    await broker.stop()
    async with asyncio.timeout(5):
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
    assert all(isinstance(outcome, Event | BrokerUnavailableError) for outcome in outcomes)
    assert any(isinstance(outcome, BrokerUnavailableError) for outcome in outcomes)


async def test_a_batch_trims_by_count_and_by_age_like_single_publishes(redis_server: RedisServer) -> None:
    """In one batch, aged events and events beyond history_size are trimmed and recorded as the deleted maximum."""
    broker = await _start(redis_server.url, Sink(), history_size=3, history_ttl=0.5)
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    try:
        async with AsyncPublisher.from_url(redis_server.url, history_size=3, history_ttl=0.5) as publisher:
            old = await publisher.publish_many([("a", "e", "x1"), ("a", "e", "x2")])
            await asyncio.sleep(0.8)  # both are older than the ttl now
            new = await publisher.publish_many([("a", "e", f"y{i}") for i in range(1, 6)])
        stored: Any = client.xrange(RedisLayout().stream("a"))
        assert [entry[0] for entry in stored] == new[2:]
        info: Any = client.xinfo_stream(RedisLayout().stream("a"))
        assert info["max-deleted-entry-id"] == new[1]
        assert (await broker.read_since(["a"], EventId.parse(old[1]), limit=10)).expired == ["a"]
        kept = await broker.read_since(["a"], EventId.parse(new[1]), limit=10)
        assert kept.expired == []
        assert [str(event.id) for event in kept.events] == new[2:]
    finally:
        client.close()
        await broker.stop()


async def test_identical_reads_in_one_iteration_share_one_call(
    redis_server: RedisServer, admin: redis.asyncio.Redis
) -> None:
    """Concurrent identical read_since and head calls go to Redis once; each caller gets its own lists."""
    broker = await _start(redis_server.url, Sink())
    try:
        published = [await broker.publish("a", "e", str(i)) for i in range(5)]
        await broker.read_since(["a"], published[0].id, limit=10)  # loads the script
        await broker.head()
        calls_before = await _script_calls(admin)
        reads = await asyncio.gather(*(broker.read_since(["a"], published[1].id, limit=10) for _ in range(40)))
        heads = await asyncio.gather(*(broker.head() for _ in range(40)))
        assert await _script_calls(admin) - calls_before == 2
        assert all(history.events == published[2:] for history in reads)
        assert len({id(history.events) for history in reads}) == 40
        assert set(heads) == {published[-1].id}
        # A later read (its own call) hands out the same event objects: parsed and encoded once.
        again = await broker.read_since(["a"], published[1].id, limit=10)
        assert all(first is second for first, second in zip(again.events, reads[0].events, strict=True))
    finally:
        await broker.stop()


async def test_a_storm_of_resumes_during_publishing_is_exact(redis_server: RedisServer) -> None:
    """Streams resuming together from one id while events keep coming each get every event once, in order."""
    settings = make_settings(broker_url=redis_server.url)
    app = create_app(settings)
    with running_server(app) as base:
        api = f"{base}{settings.prefix}"
        async with httpx.AsyncClient(timeout=10) as client, AsyncPublisher.from_url(redis_server.url) as publisher:
            before = [await publisher.publish("room", "n", i) for i in range(10)]
            resume_from = before[4]

            async def resume() -> list[str]:
                async with open_stream(
                    client, f"{api}/stream?channels=room", headers={"Last-Event-ID": resume_from}
                ) as s:
                    assert (await s.next_event()).event == "connected"
                    return [message.id for message in await s.take(5 + 20, timeout=15)]

            async def keep_publishing() -> list[str]:
                ids = []
                for i in range(20):
                    ids.append(await publisher.publish("room", "n", 10 + i))
                    await asyncio.sleep(0.005)
                return ids

            results = await asyncio.gather(keep_publishing(), *(resume() for _ in range(30)))
    later, streams = results[0], results[1:]
    expected = before[5:] + later
    wrong = [received for received in streams if received != expected]
    assert not wrong, f"{len(wrong)} of 30 streams got {wrong[0]}, expected {expected}"


async def test_a_reconnect_does_not_replay_what_came_before_a_channel_was_subscribed(
    redis_server: RedisServer, admin: redis.asyncio.Redis
) -> None:
    """After a pub/sub reconnect, catch-up replays only events a channel's live delivery missed, not older ones."""
    sink = Sink()
    broker = RedisBroker(
        redis_server.url, socket_timeout=1.0, connect_timeout=1.0, reconnect_max_delay=0.2, ping_interval=0.5
    )
    await broker.start(sink.deliver)
    try:
        await broker.subscribe("a")
        first = await broker.publish("a", "e", '"a1"')
        await sink.wait_for(1)
        # Published while this node had no subscriber on "b" (or had one and let it go): a stream that
        # subscribes later reads it from history itself; live delivery must not hand it over again.
        await broker.publish("b", "e", '"b-before"')
        await broker.subscribe("b")
        await broker.unsubscribe("a")
        await broker.publish("a", "e", '"a-while-unsubscribed"')
        await broker.subscribe("a")
        assert await admin.client_kill_filter(_type="pubsub") >= 1
        deadline = time.monotonic() + 10
        while broker.status().details["reconnects"] < 1 or not broker.status().connected:
            assert time.monotonic() < deadline, "the reader did not reconnect"
            await asyncio.sleep(0.01)
        missed = await broker.publish("b", "e", '"b-after"')
        await sink.wait_for(2)
        await asyncio.sleep(0.2)
        assert sink.events == [first, missed]
    finally:
        await broker.stop()
