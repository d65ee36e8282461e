"""One open stream: a bounded outgoing buffer, flushed in one write per event-loop iteration.

The hub's fan-out loop calls :meth:`Connection.push` with bytes encoded once for everyone. ``push`` never
blocks and never awaits: it appends to the buffer and marks the connection dirty; the hub flushes every
dirty connection once per loop iteration, so everything queued for a connection since its last write goes
out in ONE write.

Two writers, chosen when the stream starts:

- **direct** (served by uvicorn's httptools protocol, HTTP/1.1, ``send`` not wrapped by middleware): the
  response starts and ends through ASGI ``send``, but body chunks go straight to the transport, framed for
  chunked transfer encoding once per event (``Event.chunk``) rather than once per connection, and honouring
  uvicorn's flow control (a paused transport means a slow client). No task runs per connection for writing.
- **portable** (any other ASGI server, or a ``send`` wrapped by middleware as inside FastAPI): a writer task
  per connection joins the queued frames and awaits ``send``.

Backpressure policy (named, bounded): when more than ``max_buffer_bytes`` wait for a connection, the client
is not keeping up. Its buffer is dropped and the stream is ended; the client reconnects with its
Last-Event-ID and the hub replays what it missed from history. A slow client never slows the others and never
grows memory beyond its bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from ssehub._types import Receive, Scope, Send

logger = logging.getLogger("ssehub.connection")

CloseReason = Literal["client", "timeout", "overflow", "shutdown", "resync", "error"]

#: How long the final write of a stream may take before the connection is abandoned.
_FINAL_WRITE_TIMEOUT = 5.0
_OVERFLOW_WRITE_TIMEOUT = 0.25
_UVICORN_CYCLE = ("uvicorn.protocols.http.httptools_impl", "RequestResponseCycle")


def chunk(frame: bytes) -> bytes:
    """``frame`` framed as one HTTP/1.1 chunk (what the direct writer sends)."""
    return b"%x\r\n%b\r\n" % (len(frame), frame)


def _direct_cycle(send: Send, scope: Scope) -> Any:
    """uvicorn's request cycle behind ``send`` if the direct writer can use it, else ``None``."""
    cycle = getattr(send, "__self__", None)
    kind = type(cycle)
    if (kind.__module__, kind.__name__) != _UVICORN_CYCLE or scope.get("http_version") != "1.1":
        return None
    if not all(
        hasattr(cycle, name) for name in ("transport", "flow", "disconnected", "chunked_encoding", "message_event")
    ):
        return None
    return cycle


class Connection:
    """The outgoing side of one stream.

    Args:
        connection_id: an id shown to the client and in logs.
        max_buffer_bytes: bytes that may wait before the stream is ended as too slow.
        mark_dirty: called with the connection when it gets its first queued frame since its last flush.
        deadline: loop time at which the stream ends (``connection_timeout``).
    """

    __slots__ = (
        "_buffer",
        "_buffered",
        "_closed_signal",
        "_cycle",
        "_direct",
        "_drained",
        "_mark_dirty",
        "_max_buffer",
        "_send",
        "_started",
        "_waiter",
        "_writer",
        "bytes_sent",
        "client",
        "close_reason",
        "closed",
        "deadline",
        "frames_sent",
        "id",
        "opened_at",
    )

    def __init__(
        self,
        connection_id: str,
        max_buffer_bytes: int,
        mark_dirty: Callable[[Connection], None],
        deadline: float,
        send: Send | None = None,
        scope: Scope | None = None,
    ) -> None:
        self.id = connection_id
        self.deadline = deadline
        self._max_buffer = max_buffer_bytes
        self._mark_dirty = mark_dirty
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._send = send
        self._cycle: Any = _direct_cycle(send, scope or {}) if send is not None else None
        self._direct = self._cycle is not None
        self._writer: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._closed_signal: asyncio.Future[None] | None = None
        self._started = False
        self.closed = False
        self.close_reason: CloseReason | None = None
        # Counted per write (one per flush, never per event) for metrics and the stream's log line; set by
        # HubStats when the stream opens: loop time, and the ASGI client address.
        self.frames_sent = 0
        self.bytes_sent = 0
        self.opened_at = 0.0
        self.client: Any = None

    @property
    def direct(self) -> bool:
        """Whether body chunks go straight to the transport (see the module docstring)."""
        return self._direct

    @property
    def max_buffer_bytes(self) -> int:
        """The bound of this connection's buffer."""
        return self._max_buffer

    @property
    def buffered_bytes(self) -> int:
        """Bytes queued and not yet written."""
        return self._buffered

    def push(self, frame: bytes, framed: bytes | None = None) -> None:
        """Queue an SSE ``frame`` (``framed``: the same as an HTTP chunk, if the caller has it cached).

        Never blocks; a connection over its bound is closed instead.
        """
        if self.closed:
            return
        data = (framed if framed is not None else chunk(frame)) if self._direct else frame
        buffer = self._buffer
        buffer.append(data)
        self._buffered += len(data)
        if self._buffered > self._max_buffer:
            buffer.clear()
            self._buffered = 0
            self.close("overflow")
        elif len(buffer) == 1:
            self._mark_dirty(self)

    def flush(self) -> None:
        """Write everything queued, in one write (the hub calls this once per loop iteration)."""
        buffer = self._buffer
        if not buffer or not self._started:
            return  # nothing queued, or the response has not started yet: run() flushes when it starts
        if not self._direct:
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        if self._writer is not None:
            return  # a write waits for the transport to drain; it takes the rest when it runs
        cycle = self._cycle
        if cycle.disconnected:
            self.close("client")
            return
        if cycle.flow.write_paused:
            self._writer = asyncio.get_running_loop().create_task(self._drain_then_write())
            return
        data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        self.frames_sent += len(buffer)
        self.bytes_sent += len(data)
        buffer.clear()
        self._buffered = 0
        cycle.transport.write(data)
        self._notify_drained()

    def _notify_drained(self) -> None:
        waiter = self._drained
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drained(self) -> None:
        """Wait until nothing is queued any more (handed to the transport or to ``send``), or the stream closed."""
        loop = asyncio.get_running_loop()
        while (self._buffer or self._writer is not None) and not self.closed:
            self._drained = loop.create_future()
            try:
                await self._drained
            finally:
                self._drained = None

    async def _drain_then_write(self) -> None:
        """Direct writer, slow path: wait for uvicorn's flow control, then write what has queued meanwhile."""
        cycle = self._cycle
        try:
            while self._buffer and not cycle.disconnected:
                if cycle.flow.write_paused:
                    await cycle.flow.drain()
                    continue
                data = b"".join(self._buffer)
                self.frames_sent += len(self._buffer)
                self.bytes_sent += len(data)
                self._buffer.clear()
                self._buffered = 0
                cycle.transport.write(data)
        finally:
            self._writer = None
            self._notify_drained()
        if cycle.disconnected:
            self.close("client")

    async def _portable_writer(self, send: Send) -> None:
        loop = asyncio.get_running_loop()
        buffer = self._buffer
        while True:
            if buffer:
                body = buffer[0] if len(buffer) == 1 else b"".join(buffer)
                self.frames_sent += len(buffer)
                self.bytes_sent += len(body)
                buffer.clear()
                self._buffered = 0
                self._notify_drained()
                await send({"type": "http.response.body", "body": body, "more_body": True})
            elif self.closed:
                return
            else:
                self._waiter = loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None

    def close(self, reason: CloseReason) -> None:
        """End the stream soon. The first reason wins."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        for future in (self._waiter, self._closed_signal, self._drained):
            if future is not None and not future.done():
                future.set_result(None)
        if self._direct:
            # Wake the stream's task, which waits in uvicorn's receive(): it then sees the connection closed.
            self._cycle.message_event.set()

    def _on_portable_writer_done(self, task: asyncio.Task[None]) -> None:
        # A failed send ends the stream at once (the prelude may be waiting for a drain that never comes).
        if not task.cancelled() and task.exception() is not None:
            self.close("error")

    async def _watch_disconnect(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.close("client")
                return

    async def run(self, receive: Receive, prelude: Callable[[], Awaitable[None]] | None = None) -> None:
        """Stream until closed (by the hub, the client, a timeout or overflow), then end the response.

        The response must have been started with ``send`` (status and headers). ``prelude`` runs once the
        writers are up (the hub writes a resumed stream's backlog with it).
        """
        send = self._send
        assert send is not None, "a connection needs send to run"
        if self._direct and self._cycle.chunked_encoding is not True:
            self._direct = False  # uvicorn chose another framing: fall back (never seen; kept safe)
            self._buffer = [_unchunk(data) for data in self._buffer]
        self._started = True
        if self._direct:
            await self._run_direct(receive, prelude)
        else:
            await self._run_portable(receive, send, prelude)
        if self.close_reason != "client":
            # End the response cleanly so the client reconnects and resumes. A client that does not read at
            # all could hold this write forever: bound it.
            try:
                await asyncio.wait_for(
                    send({"type": "http.response.body", "body": b"", "more_body": False}), self._final_timeout()
                )
            except TimeoutError:
                # The server then reports an incomplete response and closes the socket: what we want here.
                logger.warning("connection %s (%s): the client does not read; dropping it", self.id, self.close_reason)

    async def _run_direct(self, receive: Receive, prelude: Callable[[], Awaitable[None]] | None) -> None:
        """The direct writer needs no task: this one waits in receive(), which returns on a disconnect and
        when :meth:`close` sets uvicorn's message event."""
        try:
            self.flush()
            if prelude is not None:
                await prelude()
            while not self.closed:
                message = await receive()
                if message["type"] == "http.disconnect":
                    self.close("client")
            if self.close_reason != "client":
                self.flush()
                if self._writer is not None:
                    await asyncio.wait([self._writer], timeout=self._final_timeout())
        finally:
            writer = self._writer
            if writer is not None:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)

    async def _run_portable(self, receive: Receive, send: Send, prelude: Callable[[], Awaitable[None]] | None) -> None:
        """A writer task awaits send; a watcher task awaits receive; this task waits for either or a close."""
        closed_signal = self._closed_signal = asyncio.get_running_loop().create_future()
        if self.closed:
            closed_signal.set_result(None)
        watcher = asyncio.create_task(self._watch_disconnect(receive))
        writer = asyncio.create_task(self._portable_writer(send))
        writer.add_done_callback(self._on_portable_writer_done)
        tasks = [watcher, writer]
        self.flush()
        try:
            if prelude is not None:
                await prelude()
            await asyncio.wait([closed_signal, *tasks], return_when=asyncio.FIRST_COMPLETED)
            if not self.closed:
                # A task ended without closing: receive() or the writer failed (re-raised below).
                self.close("error")
            if self.close_reason != "client":
                await asyncio.wait([writer], timeout=self._final_timeout())
        finally:
            self._closed_signal = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    def _final_timeout(self) -> float:
        # A client cut off for falling behind is known not to read: do not wait on it for long.
        return _OVERFLOW_WRITE_TIMEOUT if self.close_reason == "overflow" else _FINAL_WRITE_TIMEOUT


def _unchunk(data: bytes) -> bytes:
    """The frames inside HTTP chunks made by :func:`chunk` (only for the fallback in ``run``)."""
    frames = []
    while data:
        size_end = data.index(b"\r\n")
        size = int(data[:size_end], 16)
        start = size_end + 2
        frames.append(data[start : start + size])
        data = data[start + size + 2 :]
    return b"".join(frames)
