"""One open stream: a bounded outgoing buffer, flushed in one write per event-loop iteration.

The hub's fan-out loop calls :meth:`Connection.push` with bytes encoded once for everyone. ``push`` never
blocks and never awaits: it appends to the buffer and, when the buffer was empty, reports the connection
ready through the one callback it was given (the hub's :class:`~ssehub.flusher.Flusher`). The flusher calls
:meth:`Connection.flush` once per loop iteration, so everything queued for a connection since its last write
goes out in ONE write.

How the bytes leave is the business of the connection's writer (``ssehub/writer.py``), chosen once per
stream by :func:`select_writer`: the direct writer on uvicorn's fast path (``ssehub/_uvicorn.py``), or the
portable writer over ASGI ``send`` anywhere else.

Backpressure policy (named, bounded): when more than ``max_buffer_bytes`` wait for a connection, the client
is not keeping up. Its buffer is dropped and the stream is ended; the client reconnects with its
Last-Event-ID and the hub replays what it missed from history. A slow client never slows the others and never
grows memory beyond its bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Literal

from ssehub import _uvicorn
from ssehub._types import Receive, Scope, Send
from ssehub.writer import PortableWriter, Prelude, Writer

logger = logging.getLogger("ssehub.connection")

CloseReason = Literal["client", "timeout", "overflow", "shutdown", "resync", "error", "expired"]

#: How long the final write of a stream may take before the connection is abandoned.
_FINAL_WRITE_TIMEOUT = 5.0
_OVERFLOW_WRITE_TIMEOUT = 0.25
_reasons_logged: set[str] = set()


def select_writer(send: Send, scope: Scope, *, fast_path: bool = True) -> Writer:
    """The writer for one stream: uvicorn's fast path when it can serve it, else the portable writer.

    Why a stream is not on the fast path is logged once per reason at INFO (an app mounted in FastAPI would
    otherwise log it for every stream), and for every stream at DEBUG.
    """
    found = _uvicorn.direct_writer(send, scope) if fast_path else "the fast path is disabled (SSEHUB_FAST_PATH)"
    if isinstance(found, Writer):
        return found
    logger.debug("stream on the portable writer: %s", found)
    if found not in _reasons_logged:
        _reasons_logged.add(found)
        logger.info("streams use the portable writer: %s", found)
    return PortableWriter(send)


class Connection:
    """The outgoing side of one stream.

    Args:
        connection_id: an id shown to the client and in logs.
        max_buffer_bytes: bytes that may wait before the stream is ended as too slow.
        on_ready: called with the connection when it gets its first queued frame since its last flush.
        deadline: loop time at which the stream ends (``connection_timeout``).
        writer: how the bytes reach the client (:func:`select_writer`); ``None`` for a connection that is
            never run (tests of the hub's fan-out).
    """

    __slots__ = (
        "_buffer",
        "_buffered",
        "_chunked",
        "_drained",
        "_max_buffer",
        "_on_ready",
        "_started",
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
        on_ready: Callable[[Connection], None],
        deadline: float,
        writer: Writer | None = None,
    ) -> None:
        self.id = connection_id
        self.deadline = deadline
        self._max_buffer = max_buffer_bytes
        self._on_ready = on_ready
        # Bare SSE frames until the response starts; then what the writer queues (``Writer.wire``).
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._chunked = False
        self._writer = writer
        self._drained: asyncio.Future[None] | None = None
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
    def writer(self) -> str:
        """The name of the writer serving this stream (``direct`` or ``portable``)."""
        return self._writer.name if self._writer is not None else "none"

    @property
    def direct(self) -> bool:
        """Whether this stream is written straight to uvicorn's transport (see ``ssehub/_uvicorn.py``)."""
        return self.writer in ("direct", "native")

    @property
    def max_buffer_bytes(self) -> int:
        """The bound of this connection's buffer."""
        return self._max_buffer

    @property
    def buffered_bytes(self) -> int:
        """Bytes queued and not yet written."""
        return self._buffered

    @property
    def queued(self) -> bool:
        """Whether anything waits to be written."""
        return bool(self._buffer)

    def push(self, frame: bytes, framed: bytes | None = None) -> None:
        """Queue an SSE ``frame`` (``framed``: the same as an HTTP chunk, if the caller has it cached).

        Never blocks; a connection over its bound is closed instead.
        """
        if self.closed:
            return
        data = frame
        if self._chunked:  # the writer is set: chunked is only true once a writer started
            data = framed if framed is not None else self._writer.wire(frame)  # type: ignore[union-attr]
        buffer = self._buffer
        buffer.append(data)
        self._buffered += len(data)
        if self._buffered > self._max_buffer:
            buffer.clear()
            self._buffered = 0
            self.close("overflow")
        elif len(buffer) == 1:
            self._on_ready(self)

    def take(self) -> bytes:
        """Everything queued, as one bytes object, removed from the buffer (writers call this)."""
        buffer = self._buffer
        count = len(buffer)
        data = buffer[0] if count == 1 else b"".join(buffer)
        # Once per write, never per event: a write carries every frame queued since the last one.
        self.frames_sent += count
        self.bytes_sent += len(data)
        buffer.clear()
        self._buffered = 0
        self.notify_drained()
        return data

    def flush(self) -> None:
        """Write everything queued, in one write (the flusher calls this once per loop iteration)."""
        if self._buffer and self._started:
            self._writer.write(self)  # type: ignore[union-attr]
        # Not started: run() flushes when the response starts.

    def notify_drained(self) -> None:
        """Wake :meth:`drained` (writers call this when they handed bytes on)."""
        waiter = self._drained
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drained(self) -> None:
        """Wait until nothing is queued any more (handed to the transport or to ``send``), or the stream closed."""
        loop = asyncio.get_running_loop()
        writer = self._writer
        while (self._buffer or (writer is not None and writer.busy)) and not self.closed:
            self._drained = loop.create_future()
            try:
                await self._drained
            finally:
                self._drained = None

    def close(self, reason: CloseReason) -> None:
        """End the stream soon. The first reason wins."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)
        if self._writer is not None:
            self._writer.wake()

    async def run(self, receive: Receive, prelude: Prelude | None = None) -> None:
        """Stream until closed (by the hub, the client, a timeout or overflow), then end the response.

        The response must have been started with ``send`` (status and headers). ``prelude`` runs once the
        writer is up (the hub writes a resumed stream's backlog with it).
        """
        writer = self.begin()
        await writer.run(self, receive, prelude)
        if self.close_reason != "client":
            # End the response cleanly so the client reconnects and resumes. A client that does not read at
            # all could hold this write forever: bound it.
            try:
                await writer.finish(self.final_timeout())
            except TimeoutError:
                # The server then reports an incomplete response and closes the socket: what we want here.
                logger.warning("connection %s (%s): the client does not read; dropping it", self.id, self.close_reason)

    def begin(self) -> Writer:
        """The response has started: put the writer in charge of what is queued and what comes; return it.

        :meth:`run` calls it; a server's own stream path calls it instead of ``run`` and drives the writer.
        """
        if self._writer is None:
            raise RuntimeError("a connection without a writer cannot run")
        writer = self._writer = self._writer.start()
        if writer.chunked:
            self._buffer = [writer.wire(frame) for frame in self._buffer]
            self._buffered = sum(map(len, self._buffer))
            self._chunked = True
        self._started = True
        return writer

    def final_timeout(self) -> float:
        """How long the last writes of a closing stream may take."""
        # A client cut off for falling behind is known not to read: do not wait on it for long.
        return _OVERFLOW_WRITE_TIMEOUT if self.close_reason == "overflow" else _FINAL_WRITE_TIMEOUT
