"""Subscriptions: one stream's channels, filters and connection, and the per-channel index the hub fans out over.

Filters match top-level fields of an event's data: ``download_id=42`` matches ``{"download_id": 42}`` and
``{"download_id": "42"}`` (strings compare as they are, other JSON scalars as their JSON text). A channel's
subscriptions are indexed by their first filter (field, value), so an event reaches the subscribers of its own
value without looking at the others.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ssehub._types import Receive
from ssehub.connection import Connection
from ssehub.events import Event, EventId, Position, dump_json
from ssehub.exceptions import InvalidValueError

if TYPE_CHECKING:
    from ssehub.grants import Grant

_FILTER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_MAX_FILTERS = 8
_MAX_FILTER_VALUE = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MISSING = object()


def filter_key(value: Any) -> str | None:
    """How a data field compares with a filter's text: strings as they are, other JSON scalars as JSON."""
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return dump_json(value)
    return None


def validate_filters(filters: Mapping[str, str]) -> dict[str, str]:
    """Check filter names and values; return them as a plain dict.

    Raises:
        InvalidValueError: a bad name, an overlong value, or too many filters.
    """
    if len(filters) > _MAX_FILTERS:
        raise InvalidValueError(f"at most {_MAX_FILTERS} filters per stream, got {len(filters)}", "INVALID_FILTER")
    for name, value in filters.items():
        if _FILTER_NAME.fullmatch(name) is None:
            raise InvalidValueError(
                f"invalid filter field {name[:70]!r}: use a letter or _, then letters, digits, _", "INVALID_FILTER"
            )
        if len(value) > _MAX_FILTER_VALUE:
            raise InvalidValueError(f"filter {name!r} is longer than {_MAX_FILTER_VALUE} characters", "INVALID_FILTER")
        if _CONTROL.search(value) is not None:
            # No data field a filter could match holds these in practice; refusing them keeps logs one line.
            raise InvalidValueError(f"filter {name!r} contains a control character (CR, LF, NUL...)", "INVALID_FILTER")
    return dict(filters)


class Subscription:
    """One stream's subscription: channels, filters and the connection its events go to."""

    __slots__ = (
        "_on_live",
        "backlog",
        "channels",
        "connection",
        "cutoff",
        "filters",
        "grant",
        "pending",
        "pending_bytes",
        "rest",
    )

    def __init__(
        self,
        channels: tuple[str, ...],
        filters: dict[str, str],
        connection: Connection,
        on_live: Callable[[Subscription], None] | None = None,
    ) -> None:
        self.channels = channels
        self.filters = filters
        self.connection = connection
        # Called once the subscription has caught up (the hub moves it to its channels' live sets).
        self._on_live = on_live
        # Filters other than the one used for the index, checked per event; None when there are none.
        self.rest: tuple[tuple[str, str], ...] | None = tuple(sorted(filters.items()))[1:] or None
        # Live events held while history is read and written; None once caught up.
        self.pending: list[Event] | None = []
        self.pending_bytes = 0
        # Missed events to write once the response has started, and the id after which held events are new.
        self.backlog: list[Event] = []
        self.cutoff: Position = EventId(0, 0)
        # Who opened the stream and what it may read (ssehub.grants.Grant), checked once before it opened.
        self.grant: Grant | None = None

    async def stream(self, receive: Receive) -> None:
        """Write the backlog, go live, and stream until the connection closes (the response must be started)."""
        await self.connection.run(receive, self.replay)

    async def replay(self) -> None:
        """Write missed events page by page, each page once the previous one drained, then go live.

        Paging keeps a long replay (many channels, large events) within the connection's buffer bound: a
        replay written at once could exceed it, end the stream, and make the client retry the same replay
        forever. Live events meanwhile wait in ``pending``, bounded the same way.
        """
        connection = self.connection
        page_limit = connection.max_buffer_bytes // 2
        page = 0
        for event in self.backlog:
            if connection.closed:
                return
            frame = event.frame
            connection.push(frame, event.chunk)
            page += len(frame)
            if page >= page_limit:
                page = 0
                connection.flush()
                await connection.drained()
        self.backlog = []
        pending = self.pending or []
        self.pending = None
        cutoff = self.cutoff
        newer = False
        for event in pending:
            if not cutoff.covers(event):
                connection.push(event.frame, event.chunk)
                newer = True
        # A live notification can lag behind the history read (it comes over the broker's pub/sub connection,
        # the read over a command connection): until the live stream has passed the cutoff, an event the
        # backlog already wrote may still arrive. So the subscription goes live (no more checks) only once a
        # live event newer than the cutoff was seen; until then ``hold`` drops what the cutoff covers.
        if newer and self._on_live is not None and not connection.closed:
            on_live, self._on_live = self._on_live, None
            on_live(self)

    def accepts(self, fields: Mapping[str, Any]) -> bool:
        """Whether an event with these data fields passes every filter."""
        return all(filter_key(fields.get(name, MISSING)) == value for name, value in self.filters.items())

    def hold(self, event: Event) -> None:
        """Keep a live event aside while catching up, within the connection's buffer bound.

        Once caught up (``pending`` is None) but not yet live, write the event unless the cutoff covers it (a
        late notification of an event the backlog wrote); the first newer one makes the subscription live.
        """
        pending = self.pending
        if pending is None:
            if self.cutoff.covers(event):
                return
            self.connection.push(event.frame, event.chunk)
            on_live = self._on_live
            if on_live is not None and not self.connection.closed:
                # Not now: the hub is iterating over the index that promotion changes.
                self._on_live = None
                asyncio.get_running_loop().call_soon(on_live, self)
            return
        pending.append(event)
        self.pending_bytes += len(event.frame)
        if self.pending_bytes > self.connection.max_buffer_bytes:
            pending.clear()
            self.connection.close("overflow")


class ChannelIndex:
    """The subscriptions of one channel, as the fan-out reads them.

    - ``live``: the connections of unfiltered subscriptions that have caught up; an event's bytes are pushed
      to each with no further check (the hot loop);
    - ``catching``: unfiltered subscriptions still catching up; they hold live events aside
      (:meth:`Subscription.hold`) until :meth:`promote` moves them to ``live``;
    - ``by_field``: filtered subscriptions by their first filter (field, value); they go through ``hold``,
      which checks whether they caught up.
    """

    __slots__ = ("by_field", "catching", "count", "live")

    def __init__(self) -> None:
        self.live: dict[Connection, Subscription] = {}
        self.catching: dict[Subscription, None] = {}
        self.by_field: dict[str, dict[str, dict[Subscription, None]]] = {}
        self.count = 0

    def add(self, sub: Subscription) -> None:
        """Index a new subscription (catching up until promoted)."""
        if sub.filters:
            name, value = min(sub.filters.items())
            self.by_field.setdefault(name, {}).setdefault(value, {})[sub] = None
        else:
            self.catching[sub] = None
        self.count += 1

    def promote(self, sub: Subscription) -> None:
        """An unfiltered subscription caught up: deliver to its connection directly from now on."""
        if sub in self.catching:
            del self.catching[sub]
            self.live[sub.connection] = sub

    def subscriptions(self) -> list[Subscription]:
        """Every subscription of the channel, filtered or not."""
        subs = [*self.live.values(), *self.catching]
        for by_value in self.by_field.values():
            for group in by_value.values():
                subs.extend(group)
        return subs

    def remove(self, sub: Subscription) -> None:
        """Forget a subscription."""
        if sub.filters:
            name, value = min(sub.filters.items())
            by_value = self.by_field[name]
            subs = by_value[value]
            del subs[sub]
            if not subs:
                del by_value[value]
                if not by_value:
                    del self.by_field[name]
        elif sub in self.catching:
            del self.catching[sub]
        else:
            del self.live[sub.connection]
        self.count -= 1
