"""Events, event ids and the rules for channel names and event types.

Event ids
---------
Every event a broker stores gets an id of the form ``<milliseconds>-<sequence>``, for example
``1764040000123-0``, the same shape as a Redis Streams id. Ids are opaque to clients: they only hand the
last one back (``Last-Event-ID`` header or ``lastEventId`` query parameter).

Within one broker, ids are totally ordered across *all* channels, and every subscriber receives events in id
order. That is what makes resume on several channels exact with a single id: a client that last saw id ``P``
has seen every event ``<= P`` of every channel it subscribes to, so on reconnect the hub replays, for each of
those channels, the events ``> P``, merged in id order.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple, Protocol

from ssehub._uvicorn import chunk
from ssehub.encoder import encode
from ssehub.exceptions import InvalidEventIdError, InvalidValueError

#: A channel name: starts with a letter or digit, then letters, digits and ``_ . : -``; at most 128 characters.
#: Commas separate channels in query strings and are therefore not allowed. Per-user and per-session channels
#: (``user:<sub>``, ``session:<sid>``, see ssehub/grants.py) follow the same rule: a subject or session id that
#: would not make a valid name gets no such channel.
CHANNEL_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}"
#: An event type: the same alphabet as channels, at most 64 characters.
EVENT_TYPE_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}"

_CHANNEL_RE = re.compile(CHANNEL_PATTERN)
_EVENT_TYPE_RE = re.compile(EVENT_TYPE_PATTERN)
_EVENT_ID_RE = re.compile(r"(0|[1-9][0-9]{0,15})-(0|[1-9][0-9]{0,15})")


class EventId(NamedTuple):
    """A position in a broker's total order of events."""

    ms: int
    seq: int

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"

    @classmethod
    def parse(cls, text: str) -> EventId:
        """Parse an id issued by ssehub.

        Raises:
            InvalidEventIdError: ``text`` is not of the form ``<digits>-<digits>``.
        """
        match = _EVENT_ID_RE.fullmatch(text)
        if match is None:
            raise InvalidEventIdError(
                f"invalid event id {text[:40]!r}: expected an id ssehub issued, like '1764040000123-0'"
            )
        return cls(int(match.group(1)), int(match.group(2)))

    def covers(self, event: Event) -> bool:
        """Whether a client at this position has seen ``event`` already (its id is not greater)."""
        return event.id <= self


class Position(Protocol):
    """Where a stream stands in its broker's order: what ``Last-Event-ID`` carries and a resume starts from.

    An :class:`EventId` on brokers with one total order; a vector of per-shard ids on Redis Cluster
    (``ssehub.brokers._shard_ids.ShardVector``). ``str()`` gives the text clients hand back.
    """

    def covers(self, event: Event) -> bool:
        """Whether a client at this position has seen ``event`` already."""
        ...


def validate_channel(name: str) -> str:
    """Return ``name`` if it is a valid channel name.

    Raises:
        InvalidValueError: it is not.
    """
    if not isinstance(name, str) or _CHANNEL_RE.fullmatch(name) is None:
        raise InvalidValueError(
            f"invalid channel name {str(name)[:140]!r}: use 1-128 characters from A-Z a-z 0-9 _ . : -, "
            "starting with a letter or digit",
            "INVALID_CHANNEL",
        )
    return name


def validate_event_type(name: str) -> str:
    """Return ``name`` if it is a valid event type.

    Raises:
        InvalidValueError: it is not.
    """
    if not isinstance(name, str) or _EVENT_TYPE_RE.fullmatch(name) is None:
        raise InvalidValueError(
            f"invalid event type {str(name)[:80]!r}: use 1-64 characters from A-Z a-z 0-9 _ . : -, "
            "starting with a letter or digit",
            "INVALID_EVENT",
        )
    return name


#: What ``json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)`` builds on every call,
#: built once (an encoder keeps no state between calls).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dump_json(data: Any) -> str:
    """The one way ssehub turns published data into text: compact JSON, non-ASCII kept as is.

    Raises:
        InvalidValueError: the value is not JSON (NaN, infinities, non-JSON types, lone surrogates).
    """
    try:
        text = _ENCODER.encode(data)
        text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:  # RecursionError: nested deeper than Python recurses
        raise InvalidValueError(f"data is not valid JSON: {exc}", "INVALID_DATA") from exc
    return text


class Event:
    """One stored event: its id, channel, event type and data (compact JSON text).

    The SSE bytes of an event are computed once (``frame``) and shared by every subscriber.
    """

    __slots__ = ("_chunk", "_fields", "_frame", "channel", "data", "event", "id")

    def __init__(self, id: EventId, channel: str, event: str, data: str) -> None:
        self.id = id
        self.channel = channel
        self.event = event
        self.data = data
        self._frame: bytes | None = None
        self._chunk: bytes | None = None
        self._fields: dict[str, Any] | None = None

    @property
    def frame(self) -> bytes:
        """The event as SSE bytes, encoded on first use and cached."""
        frame = self._frame
        if frame is None:
            frame = self._frame = encode(self.data, event=self.event, id=str(self.id))
        return frame

    @property
    def chunk(self) -> bytes:
        """The frame as one HTTP/1.1 chunk, framed once for every connection on the fast path (``_uvicorn``)."""
        framed = self._chunk
        if framed is None:
            framed = self._chunk = chunk(self.frame)
        return framed

    @property
    def fields(self) -> dict[str, Any]:
        """The top-level fields of the data, parsed once, for filters; empty if the data is not an object."""
        fields = self._fields
        if fields is None:
            try:
                parsed = json.loads(self.data)
            except ValueError:
                parsed = None
            fields = self._fields = parsed if isinstance(parsed, dict) else {}
        return fields

    def __repr__(self) -> str:
        return f"Event(id={str(self.id)!r}, channel={self.channel!r}, event={self.event!r}, data={self.data[:60]!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (self.id, self.channel, self.event, self.data) == (other.id, other.channel, other.event, other.data)

    def __hash__(self) -> int:
        return hash((self.id, self.channel))
