"""Streams that must end before the shared connection timeout: those whose token expires first.

The hub ends streams at ``connection_timeout`` by looking only at the oldest (they all share one timeout, so
opening order is deadline order). A token's ``exp`` gives some streams an earlier deadline of their own, which
would break that order; those few go into a small heap instead, swept by the same loop. No timer per stream,
nothing per delivered event.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ssehub.connection import Connection
    from ssehub.grants import Grant


def token_deadline(grant: Grant | None, loop_now: float, timeout_deadline: float) -> float | None:
    """The loop time at which a stream must end because its credential expires, if before ``timeout_deadline``."""
    if grant is None or grant.expires_at is None:
        return None
    deadline = loop_now + (grant.expires_at - time.time())
    return deadline if deadline < timeout_deadline else None


class EarlyDeadlines:
    """A heap of (deadline, connection) for streams that end before the shared timeout."""

    __slots__ = ("_count", "_heap")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Connection]] = []
        self._count = itertools.count()

    def add(self, deadline: float, connection: Connection) -> None:
        """Remember that ``connection`` must end at ``deadline`` (loop time)."""
        heapq.heappush(self._heap, (deadline, next(self._count), connection))

    def due(self, now: float) -> list[Connection]:
        """Remove and return the connections whose deadline has passed (closed ones included: closing is idempotent)."""
        heap = self._heap
        due = []
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap)[2])
        return due

    def __len__(self) -> int:
        return len(self._heap)


__all__ = ["EarlyDeadlines", "token_deadline"]
