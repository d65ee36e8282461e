"""A live notification that arrives after the resume read already returned its event is not written twice."""

from __future__ import annotations

import asyncio

import pytest

from ssehub import Hub, MemoryBroker
from ssehub.events import Event
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


class LaggingBroker(MemoryBroker):
    """A memory broker whose live notifications lag behind its history until ``release``, as a Redis pub/sub
    connection can lag behind the command connection that reads history."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight: list[Event] = []

    async def publish(self, channel: str, event: str, data: str) -> Event:
        deliver, self._deliver = self._deliver, None
        try:
            stored = await super().publish(channel, event, data)
        finally:
            self._deliver = deliver
        self.in_flight.append(stored)
        return stored

    def release(self) -> None:
        """Deliver the notifications held back, in order."""
        events, self.in_flight = self.in_flight, []
        for event in events:
            if event.channel in self._subscribed and self._deliver is not None:
                self._deliver(event)


def written(sub_buffer: list[bytes], event: Event) -> int:
    """How many times an event's frame is queued on a connection."""
    return b"".join(sub_buffer).count(event.frame)


async def test_late_notification_of_a_replayed_event_is_dropped_and_later_events_flow() -> None:
    """An event in the resume's backlog whose notification arrives after the replay is written once; the next
    events are written once each, before and after the stream goes live."""
    broker = LaggingBroker()
    async with Hub(make_settings(), broker=broker) as hub:
        start = await broker.head()
        first = await hub.publish("a", "n", 1)
        async with hub.subscribe(["a"], last_event_id=str(start)) as sub:
            assert sub.backlog == [first]
            await sub.replay()
            broker.release()  # the late notification of ``first``
            second = await hub.publish("a", "n", 2)
            broker.release()
            await asyncio.sleep(0)  # the subscription goes live on the next loop iteration
            third = await hub.publish("a", "n", 3)
            broker.release()
            buffer = sub.connection._buffer
            assert [written(buffer, event) for event in (first, second, third)] == [1, 1, 1]
            assert hub._index["a"].live  # live after the first newer event: no per-event check any more
