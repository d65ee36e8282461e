"""The memory broker: history and delivery inside one process, nothing else to install.

Every channel keeps a deque of its recent events. A channel also remembers its *floor*: the id of the last
event it dropped (or the broker's start id), so that a client whose id is below the floor is told its history
expired instead of silently missing events. A client holding an id from before this process started (the
hub restarted) therefore gets a reset, which is the truth: that history is gone.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable, Sequence

from ssehub.brokers.base import Broker, BrokerStatus, DeliverCallback, GapCallback, History
from ssehub.events import Event, EventId
from ssehub.exceptions import ChannelLimitError


class _Channel:
    __slots__ = ("events", "floor")

    def __init__(self, floor: EventId) -> None:
        self.events: deque[Event] = deque()
        self.floor = floor


class MemoryBroker(Broker):
    """An in-process broker. Ids are ``<ms>-<seq>``, issued in one order across all channels.

    Args:
        history_size: events kept per channel.
        history_ttl: seconds an event is kept.
        max_channels: channels with history kept at once; publishing to one more raises ChannelLimitError.
        clock: seconds since the epoch (tests pass a fake one).
    """

    shared_across_processes = False

    def __init__(
        self,
        *,
        history_size: int = 1000,
        history_ttl: float = 3600.0,
        max_channels: int = 10000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._history_size = history_size
        self._ttl_ms = int(history_ttl * 1000)
        self._max_channels = max_channels
        self._clock = clock
        self._channels: dict[str, _Channel] = {}
        self._subscribed: set[str] = set()
        self._deliver: DeliverCallback | None = None
        self._last = EventId(int(clock() * 1000), 0)
        # The floor of channels that have no record: the start id, raised when an empty channel is dropped.
        self._removed_floor = self._last

    async def start(self, deliver: DeliverCallback, on_gap: GapCallback | None = None) -> None:
        """Deliver live events of subscribed channels to ``deliver`` from now on (delivery never has gaps here)."""
        self._deliver = deliver

    async def stop(self) -> None:
        """Stop delivering. History stays until the object is dropped."""
        self._deliver = None
        self._subscribed.clear()

    def _next_id(self) -> EventId:
        now_ms = int(self._clock() * 1000)
        last = self._last
        new = EventId(now_ms, 0) if now_ms > last.ms else EventId(last.ms, last.seq + 1)
        self._last = new
        return new

    def _trim(self, channel: _Channel, now_ms: int) -> None:
        events = channel.events
        oldest_kept = now_ms - self._ttl_ms
        while events and (len(events) > self._history_size or events[0].id.ms < oldest_kept):
            channel.floor = events.popleft().id

    def _sweep(self, now_ms: int) -> None:
        """Drop channels whose history has fully expired, remembering their floors."""
        for name in [name for name, ch in self._channels.items() if name not in self._subscribed]:
            channel = self._channels[name]
            self._trim(channel, now_ms)
            if not channel.events:
                self._removed_floor = max(self._removed_floor, channel.floor)
                del self._channels[name]

    async def publish(self, channel: str, event: str, data: str) -> Event:
        """Store the event and deliver it at once (no await between the two, so they cannot be seen apart)."""
        record = self._channels.get(channel)
        if record is None:
            if len(self._channels) >= self._max_channels:
                self._sweep(int(self._clock() * 1000))
                if len(self._channels) >= self._max_channels:
                    raise ChannelLimitError(
                        f"the broker already keeps {self._max_channels} channels (SSEHUB_MAX_CHANNELS)"
                    )
            record = self._channels[channel] = _Channel(self._removed_floor)
        stored = Event(self._next_id(), channel, event, data)
        record.events.append(stored)
        self._trim(record, stored.id.ms)
        deliver = self._deliver
        if deliver is not None and channel in self._subscribed:
            deliver(stored)
        return stored

    async def subscribe(self, channel: str) -> None:
        """Deliver live events of ``channel``."""
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering live events of ``channel``."""
        self._subscribed.discard(channel)

    async def read_since(self, channels: Sequence[str], after: EventId, limit: int) -> History:
        """Events after ``after`` on ``channels`` in id order; channels whose history no longer reaches it."""
        if after > self._last:
            # Not an id this broker issued: a client of another process, or of this one before a restart.
            return History(events=[], head=self._last, expired=list(channels))
        now_ms = int(self._clock() * 1000)
        expired: list[str] = []
        per_channel: list[list[Event]] = []
        for name in channels:
            record = self._channels.get(name)
            if record is None:
                if after < self._removed_floor:
                    expired.append(name)
                continue
            self._trim(record, now_ms)
            if after < record.floor:
                expired.append(name)
                continue
            missed: list[Event] = []
            for stored in reversed(record.events):
                if stored.id <= after:
                    break
                missed.append(stored)
            missed.reverse()
            per_channel.append(missed)
        events = per_channel[0] if len(per_channel) == 1 else list(heapq.merge(*per_channel, key=lambda e: e.id))
        return History(events=events[:limit], head=self._last, expired=expired)

    async def head(self) -> EventId:
        """The last id issued (the start id before any publish)."""
        return self._last

    def status(self) -> BrokerStatus:
        """Always connected; counts channels and stored events."""
        return BrokerStatus(
            name="memory",
            connected=True,
            details={
                "channels": len(self._channels),
                "events": sum(len(ch.events) for ch in self._channels.values()),
            },
        )
