"""Positions on a Redis Cluster: one id per shard, carried together in one ``Last-Event-ID``.

Each shard issues ``<ms>-<seq>`` ids in its own total order (its own counter, see ``docs/redis-layout.md``).
There is no order across shards, so a client's position is a *vector*: for each shard, the last id of that
shard it has seen. A shard is named by its *anchor*, the lowest hash slot it owned when the hub discovered
it (an integer 0-16383), the slot that holds its counter.

Text form (what the ``id:`` field carries)::

    c1.<anchor>:<ms>-<seq>.<anchor>:<ms>-<seq>...     e.g.  c1.0:1764040000123-0.5461:1764040000120-4

Entries are sorted by anchor, at most one per shard: the id's size is bounded by the shard count, not by
the number of channels or events. A hub keeps one vector (its position on every shard, advanced by each live
event in the order the shard sent them) and encodes it once per event for all its subscribers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from ssehub.encoder import encode
from ssehub.events import Event, EventId
from ssehub.exceptions import InvalidEventIdError

#: The version tag every cluster position starts with.
TAG = "c1"
#: At most this many shards in one position (Redis Cluster recommends at most 1,000 nodes; 64 shards is far
#: beyond what ssehub needs and keeps a hostile Last-Event-ID small).
MAX_SHARDS = 64
_ENTRY_RE = re.compile(r"(0|[1-9][0-9]{0,4}):(0|[1-9][0-9]{0,15})-(0|[1-9][0-9]{0,15})")
_SLOTS = 16384


class ShardVector:
    """An immutable map shard anchor -> the last id of that shard a client has seen.

    A shard missing from the vector is one the client has no position on: every event of it is new to it
    as far as ``covers`` goes, and a resume on channels of that shard is refused (reset).
    """

    __slots__ = ("_ids", "_text")

    def __init__(self, ids: Mapping[int, EventId]) -> None:
        self._ids = dict(sorted(ids.items()))
        self._text: str | None = None

    @classmethod
    def parse(cls, text: str) -> ShardVector:
        """Parse the text form.

        Raises:
            InvalidEventIdError: not a cluster position (wrong tag, bad entry, duplicate shard, too many).
        """
        parts = text.split(".")
        if parts[0] != TAG or len(parts) < 2 or len(parts) > MAX_SHARDS + 1:
            raise InvalidEventIdError(f"invalid cluster position {text[:60]!r}: expected 'c1.<shard>:<ms>-<seq>...'")
        ids: dict[int, EventId] = {}
        for part in parts[1:]:
            match = _ENTRY_RE.fullmatch(part)
            if match is None or int(match.group(1)) >= _SLOTS or int(match.group(1)) in ids:
                raise InvalidEventIdError(f"invalid cluster position {text[:60]!r}: bad entry {part[:40]!r}")
            ids[int(match.group(1))] = EventId(int(match.group(2)), int(match.group(3)))
        return cls(ids)

    def get(self, anchor: int) -> EventId | None:
        """The id of shard ``anchor``, or None if the vector has no position there."""
        return self._ids.get(anchor)

    def items(self) -> Iterable[tuple[int, EventId]]:
        """(anchor, id) pairs, by anchor."""
        return self._ids.items()

    def merged(self, other: Mapping[int, EventId]) -> ShardVector:
        """A vector with, per shard, the greater of this vector's id and ``other``'s."""
        ids = dict(self._ids)
        for anchor, event_id in other.items():
            mine = ids.get(anchor)
            if mine is None or event_id > mine:
                ids[anchor] = event_id
        return ShardVector(ids)

    def covers(self, event: Event) -> bool:
        """Whether a client at this position has seen ``event`` (a ShardEvent): its shard's id is not greater."""
        if not isinstance(event, ShardEvent):
            return False
        mine = self._ids.get(event.shard)
        return mine is not None and event.id <= mine

    def __str__(self) -> str:
        text = self._text
        if text is None:
            text = self._text = encode_vector(self._ids)
        return text

    def __repr__(self) -> str:
        return f"ShardVector({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShardVector):
            return NotImplemented
        return self._ids == other._ids

    def __hash__(self) -> int:
        return hash(tuple(self._ids.items()))


def encode_vector(ids: Mapping[int, EventId]) -> str:
    """The text form of a vector (entries sorted by anchor)."""
    return TAG + "".join(f".{anchor}:{event_id.ms}-{event_id.seq}" for anchor, event_id in sorted(ids.items()))


class ShardEvent(Event):
    """An event of one shard: ``id`` is its id in that shard's order, ``position`` the vector clients see.

    ``position`` is set once, before the event reaches the hub (by the broker's reader for a live event, from
    the hub's vector; by the resume read for a replayed one, from the client's vector), and the frame is
    encoded from it once.
    """

    __slots__ = ("position", "shard")

    def __init__(self, id: EventId, channel: str, event: str, data: str, shard: int) -> None:
        super().__init__(id, channel, event, data)
        self.shard = shard
        self.position = ""

    @property
    def frame(self) -> bytes:
        """The event as SSE bytes with the vector as its id, encoded on first use and cached."""
        frame = self._frame
        if frame is None:
            frame = self._frame = encode(self.data, event=self.event, id=self.position or None)
        return frame
