"""The broker contract: what the hub needs from an engine that stores and moves events.

Brokers move events; the hub encodes them. A broker:

- stores every published event in a per-channel history, bounded by count and by age, and gives it an
  :class:`~ssehub.events.EventId` that is greater than every id it issued before, across all channels;
- feeds live events, in id order, to the one ``deliver`` callback the hub gives to :meth:`Broker.start`, for
  the channels the hub has :meth:`Broker.subscribe`-d to (it may deliver others too; the hub ignores them);
- answers :meth:`Broker.read_since` so that a subscriber can resume exactly.

One broker instance per process; it holds one live reader however many connections the hub serves.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ssehub.events import Event, EventId, Position

#: The hub's callback for live events. It runs in the event loop and must not block.
DeliverCallback = Callable[[Event], None]
#: The hub's callback for channels on which live delivery lost events that history no longer holds (a long
#: outage of the broker's live connection). The hub ends those channels' streams; clients then resume and,
#: their ids being older than the history, are told to reset.
GapCallback = Callable[[Sequence[str]], None]


@dataclass(frozen=True, slots=True)
class History:
    """The answer of :meth:`Broker.read_since`.

    Attributes:
        events: the stored events with an id greater than the requested one, on the requested channels,
            in id order.
        head: the greatest id the broker had issued when it read (the requested id if greater). Live
            delivery after this read is exact from ``head`` on.
        expired: the requested channels whose retained history no longer reaches back to the requested id:
            some events the client missed on them are gone. The hub then tells the client to reset.
    """

    events: list[Event]
    head: EventId
    expired: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Replay:
    """The answer of :meth:`Broker.read_after`: what the hub replays to a resuming stream.

    Attributes:
        events: the missed events, in an order every subscriber may see them in.
        cutoff: the position the read reached; held live events that it covers were in ``events``.
        expired: the requested channels whose retained history no longer reaches back to the position.
    """

    events: list[Event]
    cutoff: Position
    expired: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class BrokerStatus:
    """What ``/health`` shows of the broker."""

    name: str
    connected: bool
    details: dict[str, Any] = field(default_factory=dict)


class Broker(ABC):
    """An engine that stores, orders and moves events between publishers and hubs."""

    #: Whether several processes can share this broker (``ssehub serve --workers N`` needs it).
    shared_across_processes: bool = False

    @abstractmethod
    async def start(self, deliver: DeliverCallback, on_gap: GapCallback | None = None) -> None:
        """Connect; from now on pass live events of subscribed channels to ``deliver`` and gaps to ``on_gap``."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop delivering and release every connection and task."""

    @abstractmethod
    async def publish(self, channel: str, event: str, data: str) -> Event:
        """Store an event in the channel's history and notify live readers, atomically; return it with its id.

        Raises:
            BrokerUnavailableError: the engine cannot be reached; nothing was stored.
            ChannelLimitError: the event would create a channel beyond the configured limit.
        """

    @abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Start receiving live events of ``channel``; once it returns, every later publish is delivered.

        The hub calls this for the first local subscriber of a channel, never concurrently with
        :meth:`unsubscribe` or another :meth:`subscribe`.
        """

    @abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving live events of ``channel`` (the hub calls this when its last subscriber leaves)."""

    @abstractmethod
    async def read_since(self, channels: Sequence[str], after: EventId, limit: int) -> History:
        """Stored events with an id greater than ``after`` on ``channels``, merged in id order, at most ``limit``.

        Raises:
            BrokerUnavailableError: the engine cannot be reached.
        """

    @abstractmethod
    async def head(self) -> EventId:
        """The greatest id issued so far (or an id below any future one if none was).

        Raises:
            BrokerUnavailableError: the engine cannot be reached.
        """

    # The hub resumes through these three. Brokers with one total order keep the defaults (an EventId is the
    # position); a broker without one (Redis Cluster: one order per shard) overrides all three.

    def parse_position(self, text: str) -> Position:
        """Parse a client's ``Last-Event-ID`` into a position of this broker.

        Raises:
            InvalidEventIdError: ``text`` is not a position this kind of broker issues.
        """
        return EventId.parse(text)

    async def position(self) -> Position:
        """The current position: a stream that starts here misses nothing published later.

        Raises:
            BrokerUnavailableError: the engine cannot be reached.
        """
        return await self.head()

    async def read_after(self, channels: Sequence[str], after: Position, limit: int) -> Replay:
        """What a client at ``after`` missed on ``channels`` (at most ``limit`` events), and where that leaves it.

        Raises:
            BrokerUnavailableError: the engine cannot be reached.
        """
        if not isinstance(after, EventId):
            raise TypeError(f"{type(self).__name__} positions are event ids, got {type(after).__name__}")
        history = await self.read_since(channels, after, limit)
        return Replay(history.events, history.head, history.expired)

    @abstractmethod
    def status(self) -> BrokerStatus:
        """The broker's state for ``/health``; must not do I/O."""
