"""The flusher: writes every connection that has frames queued, once per event-loop iteration.

Connections report themselves ready through :meth:`Flusher.ready` (the one callback a connection gets); the
flusher calls :meth:`~ssehub.connection.Connection.flush` on each. Calls go one way: connections never call
the hub, and the hub never flushes a connection itself.

Self-clocking coalescing: the next flush waits as long as the last one took (at most :data:`MAX_DELAY`). At
light load a flush takes microseconds, so events go out at once; under load the events that arrive while a
flush writes to thousands of sockets go out together in the next one, one write per connection for all of
them, whatever way the broker hands them over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ssehub.connection import Connection

#: The longest a flush waits for coalescing (a bound on the latency the coalescing adds).
MAX_DELAY = 0.025


class Flusher:
    """Collects ready connections and flushes them together (one per hub).

    Args:
        sample: called after a flush with the id time (ms) of the oldest event it wrote (see :meth:`note`):
            one publish-to-write latency sample per flush, never one per event or connection.
    """

    __slots__ = ("_next_at", "_oldest_ms", "_ready", "_sample", "_scheduled")

    def __init__(self, sample: Callable[[int], None] | None = None) -> None:
        self._ready: list[Connection] = []
        self._scheduled = False
        self._next_at = 0.0
        self._sample = sample
        self._oldest_ms = 0

    def note(self, event_ms: int) -> None:
        """An event was fanned out: keep its id time if it is the first one the coming flush writes."""
        if self._scheduled and not self._oldest_ms:
            self._oldest_ms = event_ms

    def ready(self, connection: Connection) -> None:
        """``connection`` has frames queued: flush it with the others soon."""
        self._ready.append(connection)
        if not self._scheduled:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            delay = self._next_at - loop.time()
            if delay > 0:
                loop.call_later(delay, self._flush)
            else:
                loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        ready, self._ready = self._ready, []
        loop = asyncio.get_running_loop()
        started = loop.time()
        for connection in ready:
            connection.flush()
        ended = loop.time()
        self._next_at = ended + min(ended - started, MAX_DELAY)
        oldest, self._oldest_ms = self._oldest_ms, 0
        if oldest and self._sample is not None:
            self._sample(oldest)
