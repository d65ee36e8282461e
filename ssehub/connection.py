"""One open stream: a bounded outgoing buffer and the task that writes it.

The hub's fan-out loop calls :meth:`Connection.push` with bytes that were encoded once for everyone. ``push``
never blocks and never awaits: it appends to the buffer and wakes the writer. The writer joins everything
queued since its last write into ONE ``send`` (one write system call), so a burst of events costs one
wake-up and one write per connection, not one per event.

Backpressure policy (named, bounded): when more than ``max_buffer_bytes`` wait for a connection, the client is
not keeping up. Its buffer is dropped and the stream is ended; the client reconnects with its Last-Event-ID
and the hub replays what it missed from history. A slow client therefore never slows the others and never
grows memory beyond its bound.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

from ssehub._types import Receive, Send

logger = logging.getLogger("ssehub.connection")

CloseReason = Literal["client", "timeout", "overflow", "shutdown", "error"]

#: How long the final write of a stream may take before the connection is abandoned.
_FINAL_WRITE_TIMEOUT = 5.0
_OVERFLOW_WRITE_TIMEOUT = 0.25


class Connection:
    """The outgoing side of one stream.

    Args:
        connection_id: an id shown to the client and in logs.
        max_buffer_bytes: bytes that may wait before the stream is ended as too slow.
    """

    __slots__ = ("_buffer", "_buffered", "_closed_signal", "_max_buffer", "_waiter", "close_reason", "closed", "id")

    def __init__(self, connection_id: str, max_buffer_bytes: int) -> None:
        self.id = connection_id
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._max_buffer = max_buffer_bytes
        self._waiter: asyncio.Future[None] | None = None
        self._closed_signal: asyncio.Future[None] | None = None
        self.closed = False
        self.close_reason: CloseReason | None = None

    def push(self, frame: bytes) -> None:
        """Queue ``frame`` for writing. Never blocks; a connection over its bound is closed instead."""
        if self.closed:
            return
        self._buffer.append(frame)
        self._buffered += len(frame)
        if self._buffered > self._max_buffer:
            self._buffer.clear()
            self._buffered = 0
            self.close("overflow")
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self, reason: CloseReason) -> None:
        """End the stream soon (the writer finishes it). The first reason wins."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        for future in (self._waiter, self._closed_signal):
            if future is not None and not future.done():
                future.set_result(None)

    @property
    def max_buffer_bytes(self) -> int:
        """The bound of this connection's buffer."""
        return self._max_buffer

    @property
    def buffered_bytes(self) -> int:
        """Bytes queued and not yet handed to the server."""
        return self._buffered

    async def _write_loop(self, send: Send) -> None:
        loop = asyncio.get_running_loop()
        buffer = self._buffer
        while True:
            if buffer:
                body = buffer[0] if len(buffer) == 1 else b"".join(buffer)
                buffer.clear()
                self._buffered = 0
                await send({"type": "http.response.body", "body": body, "more_body": True})
            elif self.closed:
                return
            else:
                self._waiter = loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None

    async def _watch_disconnect(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.close("client")
                return

    async def run(self, send: Send, receive: Receive) -> None:
        """Write queued frames until the stream is closed, then end the response.

        The writer and the disconnect watcher run as two tasks; the first to finish ends the other. A close
        from the hub (timeout, overflow, shutdown) lets the writer flush for a bounded time: a writer blocked
        on a client that does not read is cancelled rather than waited for.
        """
        closed_signal = self._closed_signal = asyncio.get_running_loop().create_future()
        if self.closed:
            closed_signal.set_result(None)
        watcher = asyncio.create_task(self._watch_disconnect(receive), name=f"ssehub-watch-{self.id}")
        writer = asyncio.create_task(self._write_loop(send), name=f"ssehub-write-{self.id}")
        try:
            await asyncio.wait((watcher, writer, closed_signal), return_when=asyncio.FIRST_COMPLETED)
            if not writer.done() and self.close_reason != "client":
                await asyncio.wait((writer,), timeout=self._final_write_timeout())
        finally:
            self._closed_signal = None
            for task in (watcher, writer):
                task.cancel()
            await asyncio.gather(watcher, writer, return_exceptions=True)
        if not writer.cancelled() and writer.exception() is not None:
            self.close("error")
            raise writer.exception()  # type: ignore[misc]
        if self.close_reason != "client":
            # End the response cleanly so the client reconnects and resumes. A client that does not read
            # at all could hold this write forever: bound it.
            try:
                await asyncio.wait_for(
                    send({"type": "http.response.body", "body": b"", "more_body": False}),
                    self._final_write_timeout(),
                )
            except TimeoutError:
                # The server then reports an incomplete response and closes the socket: what we want here.
                logger.warning("connection %s (%s): the client does not read; dropping it", self.id, self.close_reason)

    def _final_write_timeout(self) -> float:
        # A client cut off for falling behind is known not to read: do not wait on it for long.
        return _OVERFLOW_WRITE_TIMEOUT if self.close_reason == "overflow" else _FINAL_WRITE_TIMEOUT
