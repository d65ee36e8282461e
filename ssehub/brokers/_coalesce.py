"""Coalescing for the Redis broker: what is asked during one event-loop iteration goes to Redis in one call.

- :meth:`Coalescer.publish`: publishes of one iteration are handed to ``send_batch`` together (at most
  ``max_batch`` a call); each caller gets its own event or its own error.
- :meth:`Coalescer.shared`: identical reads asked during one iteration share one call.

Every call is sent by a task started in this iteration, whose first step runs in the next one, after every
callback of this one: whatever else is asked meanwhile joins, at no extra hop of latency. The coalescer owns
those tasks: :meth:`stop` cancels them and fails whoever still waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NamedTuple, TypeVar

from ssehub.events import Event
from ssehub.exceptions import BrokerUnavailableError

_T = TypeVar("_T")


class Pending(NamedTuple):
    """A publish waiting for the next batch: what to store, and where its caller waits for the outcome."""

    channel: str
    event: str
    data: str
    future: asyncio.Future[Event]


def fail(batch: list[Pending], error: BaseException) -> None:
    """Give ``error`` to every publish of ``batch`` that has no outcome yet."""
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(error)


class Coalescer:
    """Batches publishes and shares reads per loop iteration (see the module docstring)."""

    def __init__(self, send_batch: Callable[[list[Pending]], Awaitable[None]], max_batch: int) -> None:
        self._send_batch = send_batch
        self._max_batch = max_batch
        self._queued: list[Pending] = []
        self._reads: dict[tuple[Any, ...], asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def publish(self, channel: str, event: str, data: str) -> Event:
        """Queue a publish for this iteration's batch and wait for its outcome."""
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._queued.append(Pending(channel, event, data, future))
        if len(self._queued) == 1:
            self._spawn(self._send_queued())
        return await future

    async def _send_queued(self) -> None:
        batch = self._queued[: self._max_batch]
        del self._queued[: self._max_batch]
        if self._queued:
            self._spawn(self._send_queued())  # more than one call's worth: the rest goes in parallel
        await self._send_batch(batch)

    async def shared(self, key: tuple[Any, ...], fetch: Callable[[], Awaitable[_T]]) -> _T:
        """``fetch()``'s answer, shared by every caller asking for ``key`` during this loop iteration.

        The call is sent in the next iteration, by a task whose first step forgets ``key``: a caller that
        arrives later starts a new call. So everyone sharing a read asked for it before it was sent, which
        keeps resume exact: a subscription is indexed before it asks, and any event newer than the read's
        head is published after the read ran, hence reaches the subscription live.
        """
        future = self._reads.get(key)
        if future is None:
            future = self._reads[key] = asyncio.get_running_loop().create_future()
            self._spawn(self._fetch_shared(key, future, fetch))
        # shield: one caller giving up (its client left) must not cancel the read for the others.
        result: _T = await asyncio.shield(future)
        return result

    async def _fetch_shared(
        self, key: tuple[Any, ...], future: asyncio.Future[Any], fetch: Callable[[], Awaitable[Any]]
    ) -> None:
        if self._reads.get(key) is future:
            del self._reads[key]
        try:
            result = await fetch()
        except BaseException as exc:
            if not future.done():
                error = (
                    exc if not isinstance(exc, asyncio.CancelledError) else BrokerUnavailableError("the broker stopped")
                )
                future.set_exception(error)
                future.exception()  # retrieved here: every caller may have given up
            if not isinstance(exc, Exception):
                raise  # cancelled by stop(), or the process is exiting: the callers got their error above
            return
        if not future.done():
            future.set_result(result)

    def stop(self, error: BaseException) -> list[asyncio.Task[None]]:
        """Fail every queued publish and pending read with ``error``; cancel and return the tasks in flight."""
        queued, self._queued = self._queued, []
        fail(queued, error)
        reads, self._reads = self._reads, {}
        for future in reads.values():  # their tasks are cancelled below, maybe before they ran
            if not future.done():
                future.set_exception(error)
                future.exception()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        return tasks
