"""A hub's counters: plain integers, kept where things happen and read when someone asks (``/metrics``).

Nothing here runs per delivered event. The hub counts once per event (``received``, and ``delivered`` as the
number of subscribers the fan-out matched), once per stream (opened, closed with its reason, resumed, reset,
refused), once per publish and once per flush (the latency sample). A connection counts the frames and bytes
of each of its writes (once per flush, not per event); closed streams add theirs to ``closed_bytes`` here and
open ones are summed when read (:attr:`HubStats.bytes_written`), so a scrape every few seconds walks the open
streams once instead of every write paying for a shared counter.

:mod:`ssehub.metrics` turns these numbers into Prometheus metrics; :mod:`ssehub.logs` writes the one line per
stream opened and closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from ssehub.logs import log_stream_closed, log_stream_opened

if TYPE_CHECKING:
    from ssehub._types import Scope
    from ssehub.connection import Connection
    from ssehub.subscription import Subscription

#: How a stream started: without an id, resumed from history, or told to reset (history expired, bad id).
OpenMode = Literal["new", "resumed", "reset"]


class HubStats:
    """Counters of one hub (one process). Read them at any time; they only grow, except ``open``.

    Args:
        connections: the hub's open connections (read, never changed, to sum the bytes open streams wrote).
    """

    __slots__ = (
        "_connections",
        "closed",
        "closed_bytes",
        "delivered",
        "gaps",
        "latency_observer",
        "opened",
        "published",
        "received",
        "refused",
        "replayed",
        "resets",
        "resumes",
    )

    def __init__(self, connections: Mapping[Connection, Any]) -> None:
        self._connections = connections
        #: Streams that started (their response began).
        self.opened = 0
        #: Streams that ended, by close reason (``client``, ``timeout``, ``overflow``, ``shutdown``, ...).
        self.closed: dict[str, int] = {}
        #: Stream requests answered with an error before any stream started, by error code.
        self.refused: dict[str, int] = {}
        #: Streams that resumed exactly from their Last-Event-ID.
        self.resumes = 0
        #: Streams told to reset, by reason (``history_expired``, ``invalid_last_event_id``).
        self.resets: dict[str, int] = {}
        #: Events accepted by this process's ``Hub.publish``.
        self.published = 0
        #: Live events the broker handed to this process.
        self.received = 0
        #: Live event deliveries: per event, the number of subscriptions the fan-out matched.
        self.delivered = 0
        #: Events written from history to resuming streams.
        self.replayed = 0
        #: Channels on which the broker reported lost live events (each report counts each channel once).
        self.gaps = 0
        #: Bytes written by streams that have ended.
        self.closed_bytes = 0
        #: Called once per flush with the publish-to-write latency of the flush's oldest event, in seconds;
        #: ``None`` when no one collects it (metrics off).
        self.latency_observer: Callable[[float], None] | None = None

    @property
    def bytes_written(self) -> int:
        """Response body bytes handed to the server by every stream, ended or open."""
        return self.closed_bytes + sum(connection.bytes_sent for connection in self._connections)

    def count_refusal(self, code: str) -> None:
        """A stream request was refused with the error ``code``."""
        self.refused[code] = self.refused.get(code, 0) + 1

    def count_reset(self, reason: str) -> None:
        """A stream was told to reset."""
        self.resets[reason] = self.resets.get(reason, 0) + 1

    def stream_opened(self, sub: Subscription, scope: Scope | None, mode: OpenMode) -> None:
        """Count a stream that has opened and log it (once per stream)."""
        connection = sub.connection
        connection.opened_at = asyncio.get_running_loop().time()
        connection.client = scope.get("client") if scope is not None else None
        self.opened += 1
        log_stream_opened(connection.id, sub.channels, connection.client, mode)

    def stream_closed(self, sub: Subscription) -> None:
        """Count a stream that has ended and log it; nothing for one that never opened (refused mid-open)."""
        connection = sub.connection
        if not connection.opened_at:
            return
        reason = connection.close_reason or "shutdown"
        self.closed[reason] = self.closed.get(reason, 0) + 1
        self.closed_bytes += connection.bytes_sent
        duration = asyncio.get_running_loop().time() - connection.opened_at
        log_stream_closed(
            connection.id,
            sub.channels,
            connection.client,
            reason,
            duration,
            connection.frames_sent,
            connection.bytes_sent,
        )

    def observe_flush(self, oldest_ms: int) -> None:
        """Sample publish-to-write latency once per flush: now minus the oldest event's id time (ms).

        Ids carry the broker's clock (Redis: the Redis server's), so skew between machines shows here; a
        negative difference is counted as 0.
        """
        observe = self.latency_observer
        if observe is not None:
            observe(max(0.0, time.time() - oldest_ms / 1000))
