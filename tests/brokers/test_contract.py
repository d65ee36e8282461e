"""The broker contract: one suite, run unchanged against every broker (``memory`` and ``redis``)."""

from __future__ import annotations

import asyncio

import pytest

from ssehub.events import EventId
from ssehub.exceptions import ChannelLimitError
from tests.brokers.conftest import MakeBroker

pytestmark = pytest.mark.anyio


async def test_publish_returns_increasing_ids_across_channels(make_broker: MakeBroker) -> None:
    """Ids issued by publish grow strictly, whatever the channel."""
    broker = (await make_broker()).broker
    ids = [(await broker.publish(name, "tick", str(i))).id for i, name in enumerate("abcabcab")]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


async def test_publish_returns_the_event_as_given(make_broker: MakeBroker) -> None:
    """The returned event carries the channel, type and data verbatim."""
    broker = (await make_broker()).broker
    data = '{"text":"é ✓\\n","lines":"a\\r\\nb"}'
    event = await broker.publish("ch:1", "my.type", data)
    assert (event.channel, event.event, event.data) == ("ch:1", "my.type", data)


async def test_live_delivery_in_order_only_after_subscribe(make_broker: MakeBroker) -> None:
    """Deliver gets events of subscribed channels only, from subscribe on, in id order across channels."""
    harness = await make_broker()
    broker = harness.broker
    await broker.publish("a", "e", "before")
    await broker.subscribe("a")
    await broker.subscribe("b")
    published = []
    for i, name in enumerate(["a", "b", "c", "a", "b", "a"]):
        published.append(await broker.publish(name, "e", f'"{i}"'))
    expected = [event for event in published if event.channel != "c"]
    delivered = await harness.wait_for(len(expected))
    assert delivered == expected
    await asyncio.sleep(0.05)
    assert harness.delivered == expected


async def test_unsubscribe_stops_delivery(make_broker: MakeBroker) -> None:
    """After unsubscribe a channel's events are no longer delivered; others still are."""
    harness = await make_broker()
    broker = harness.broker
    await broker.subscribe("a")
    await broker.subscribe("b")
    await broker.unsubscribe("a")
    await broker.publish("a", "e", "1")
    last = await broker.publish("b", "e", "2")
    delivered = await harness.wait_for(1)
    await asyncio.sleep(0.05)
    assert delivered == [last]


async def test_read_since_one_channel_is_exact(make_broker: MakeBroker) -> None:
    """read_since returns exactly the events after the id, in order, and the head."""
    broker = (await make_broker()).broker
    events = [await broker.publish("a", "e", str(i)) for i in range(5)]
    history = await broker.read_since(["a"], events[1].id, limit=100)
    assert history.events == events[2:]
    assert history.expired == []
    assert history.head == events[-1].id


async def test_read_since_several_channels_merges_in_id_order(make_broker: MakeBroker) -> None:
    """Events of several channels come back merged by id; other channels are left out."""
    broker = (await make_broker()).broker
    start = await broker.head()
    events = [await broker.publish(name, "e", str(i)) for i, name in enumerate("abcbaab")]
    history = await broker.read_since(["a", "b"], start, limit=100)
    assert history.events == [event for event in events if event.channel in "ab"]
    assert history.expired == []
    middle = await broker.read_since(["b", "c"], events[2].id, limit=100)
    assert middle.events == [events[3], events[6]]


async def test_read_since_respects_limit(make_broker: MakeBroker) -> None:
    """At most ``limit`` events come back, the oldest first."""
    broker = (await make_broker()).broker
    start = await broker.head()
    events = [await broker.publish(name, "e", str(i)) for i, name in enumerate("abab")]
    history = await broker.read_since(["a", "b"], start, limit=3)
    assert history.events == events[:3]


async def test_read_since_from_head_is_empty_and_not_expired(make_broker: MakeBroker) -> None:
    """A client positioned at the head (what a new stream gets) resumes without a reset."""
    broker = (await make_broker()).broker
    head = await broker.head()
    history = await broker.read_since(["a", "never-used"], head, limit=10)
    assert history.events == []
    assert history.expired == []
    event = await broker.publish("a", "e", "1")
    assert (await broker.read_since(["a", "never-used"], head, limit=10)).events == [event]


async def test_expired_when_trimmed_by_count(make_broker: MakeBroker) -> None:
    """A channel is expired for an id older than its oldest dropped event, not for later ids."""
    broker = (await make_broker(history_size=3)).broker
    events = [await broker.publish("a", "e", str(i)) for i in range(6)]
    gone = await broker.read_since(["a", "b"], events[1].id, limit=100)
    assert gone.expired == ["a"]
    assert gone.events == []
    kept = await broker.read_since(["a"], events[2].id, limit=100)
    assert kept.expired == []
    assert kept.events == events[3:]


async def test_expired_when_trimmed_by_age(make_broker: MakeBroker) -> None:
    """Events older than the ttl are gone: an id before them is expired, the last one is not."""
    broker = (await make_broker(history_ttl=0.3)).broker
    start = await broker.head()
    event = await broker.publish("a", "e", "1")
    assert (await broker.read_since(["a"], start, limit=10)).events == [event]
    await asyncio.sleep(0.6)
    old = await broker.read_since(["a"], start, limit=10)
    assert old.expired == ["a"]
    assert old.events == []
    current = await broker.read_since(["a"], event.id, limit=10)
    assert current.expired == []
    assert current.events == []


async def test_unknown_id_above_head_expires_every_channel(make_broker: MakeBroker) -> None:
    """An id greater than any issued is unknown: every requested channel is reported expired."""
    broker = (await make_broker()).broker
    event = await broker.publish("a", "e", "1")
    future = EventId(event.id.ms + 60_000, 0)
    history = await broker.read_since(["a", "b"], future, limit=10)
    assert sorted(history.expired) == ["a", "b"]
    assert history.events == []


async def test_id_before_the_broker_started_is_expired(make_broker: MakeBroker) -> None:
    """An id from before the broker's history began (a lost history) gives a reset, not silence."""
    broker = (await make_broker()).broker
    await broker.publish("a", "e", "1")
    history = await broker.read_since(["a", "b"], EventId(1, 0), limit=10)
    assert sorted(history.expired) == ["a", "b"]


async def test_head_is_the_last_issued_id(make_broker: MakeBroker) -> None:
    """head() is below every future id before any publish, then equals the last id issued."""
    broker = (await make_broker()).broker
    first = await broker.head()
    assert await broker.head() == first
    event = await broker.publish("a", "e", "1")
    assert event.id > first
    assert await broker.head() == event.id
    other = await broker.publish("b", "e", "2")
    assert await broker.head() == other.id


async def test_max_channels_refuses_a_new_channel(make_broker: MakeBroker) -> None:
    """Beyond max_channels a new channel is refused, existing ones still accept events."""
    broker = (await make_broker(max_channels=2)).broker
    await broker.publish("a", "e", "1")
    await broker.publish("b", "e", "1")
    with pytest.raises(ChannelLimitError):
        await broker.publish("c", "e", "1")
    await broker.publish("a", "e", "2")


async def test_max_channels_frees_channels_whose_history_expired(make_broker: MakeBroker) -> None:
    """Channels whose events all aged out stop counting; a client behind them is told to reset."""
    broker = (await make_broker(max_channels=2, history_ttl=0.3)).broker
    start = await broker.head()
    await broker.publish("a", "e", "1")
    b_event = await broker.publish("b", "e", "1")
    await asyncio.sleep(0.6)
    new = await broker.publish("c", "e", "1")
    assert new.id > b_event.id
    history = await broker.read_since(["a", "b"], start, limit=10)
    assert sorted(history.expired) == ["a", "b"]
    assert (await broker.read_since(["a", "b", "c"], b_event.id, limit=10)).events == [new]


async def test_status_reports_a_connected_broker(make_broker: MakeBroker) -> None:
    """status() names the broker and says it is connected once started."""
    broker = (await make_broker()).broker
    status = broker.status()
    assert status.connected is True
    assert status.name in {"memory", "redis"}


async def test_stop_ends_delivery(make_broker: MakeBroker) -> None:
    """After stop() the deliver callback is never called again and no broker task is left."""
    harness = await make_broker()
    broker = harness.broker
    await broker.subscribe("a")
    await broker.publish("a", "e", "1")
    await harness.wait_for(1)
    tasks_before = asyncio.all_tasks()
    await broker.stop()
    leftover = [task for task in asyncio.all_tasks() - tasks_before if not task.done()]
    assert leftover == []
    assert all(task.done() or "ssehub" not in task.get_name() for task in asyncio.all_tasks())
    await asyncio.sleep(0.05)
    assert len(harness.delivered) == 1
