"""How one stream's bytes reach its client: the writer interface and the portable writer over ASGI ``send``.

A :class:`~ssehub.connection.Connection` owns what is independent of the server (the bounded buffer, the
overflow policy, close reasons); its writer owns how queued bytes leave the process. A writer is chosen once
per stream (:func:`ssehub.connection.select_writer`):

- :class:`PortableWriter` (here): any ASGI server, any middleware. A task per stream joins what is queued and
  awaits ``send``; another waits in ``receive`` for the client going away.
- ``DirectWriter`` (``ssehub/_uvicorn.py``, the only module that knows uvicorn's internals): body chunks go
  straight to uvicorn's transport, framed once per event, with no task per stream.
- ``NativeWriter`` (the same module): the direct writer of a stream ``ssehub serve`` answers itself on
  uvicorn's connection (``NativeStreams``), without uvicorn's request cycle.

The first two start and end the response through ASGI ``send``; the native path writes the head and the last
chunk itself.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ssehub._types import Receive, Send

if TYPE_CHECKING:
    from ssehub.connection import Connection

Prelude = Callable[[], Awaitable[None]]


class Writer(ABC):
    """Moves a connection's queued bytes to its client.

    The connection calls :meth:`write` when the hub flushes it, :meth:`wake` when it closes, and :meth:`run`
    once, after the response has started.
    """

    __slots__ = ("send",)

    #: Whether queued data is HTTP/1.1 chunks (``Event.chunk``) rather than bare SSE frames.
    chunked = False
    #: A short name for logs and tests.
    name = "writer"

    def __init__(self, send: Send) -> None:
        self.send = send

    def start(self) -> Writer:
        """The writer to use now that the response has started: ``self``, or a fallback."""
        return self

    def wire(self, frame: bytes) -> bytes:
        """``frame`` in the form this writer queues (see :attr:`chunked`)."""
        return frame

    @property
    def busy(self) -> bool:
        """Whether bytes taken from the connection are still on their way (the connection is not drained)."""
        return False

    @abstractmethod
    def write(self, connection: Connection) -> None:
        """Hand what ``connection`` has queued to the client now, or arrange that it goes soon. Never awaits."""

    @abstractmethod
    def wake(self) -> None:
        """The connection closed: wake whatever part of the writer waits, so that :meth:`run` returns."""

    @abstractmethod
    async def run(self, connection: Connection, receive: Receive, prelude: Prelude | None) -> None:
        """Stream until the connection closes; then, unless the client left, write what is still queued.

        ``prelude`` runs once the writer is up (the hub writes a resumed stream's backlog with it).
        """

    async def finish(self, timeout: float) -> None:
        """End the response (the client then reconnects and resumes), waiting at most ``timeout`` seconds.

        Raises:
            TimeoutError: the client does not read.
        """
        await asyncio.wait_for(self.send({"type": "http.response.body", "body": b"", "more_body": False}), timeout)


class PortableWriter(Writer):
    """A writer task awaits ``send``; a watcher task awaits ``receive``; :meth:`run` waits for either or a close."""

    __slots__ = ("_closed_signal", "_waiter")

    name = "portable"

    def __init__(self, send: Send) -> None:
        super().__init__(send)
        self._waiter: asyncio.Future[None] | None = None
        self._closed_signal: asyncio.Future[None] | None = None

    def write(self, connection: Connection) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def wake(self) -> None:
        for future in (self._waiter, self._closed_signal):
            if future is not None and not future.done():
                future.set_result(None)

    async def _pump(self, connection: Connection) -> None:
        loop = asyncio.get_running_loop()
        send = self.send
        while True:
            if connection.queued:
                body = connection.take()
                await send({"type": "http.response.body", "body": body, "more_body": True})
            elif connection.closed:
                return
            else:
                self._waiter = loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None

    @staticmethod
    async def _watch_disconnect(connection: Connection, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                connection.close("client")
                return

    async def run(self, connection: Connection, receive: Receive, prelude: Prelude | None) -> None:
        closed_signal = self._closed_signal = asyncio.get_running_loop().create_future()
        if connection.closed:
            closed_signal.set_result(None)
        watcher = asyncio.create_task(self._watch_disconnect(connection, receive))
        pump = asyncio.create_task(self._pump(connection))

        def on_pump_done(task: asyncio.Task[None]) -> None:
            # A failed send ends the stream at once (the prelude may be waiting for a drain that never comes).
            if not task.cancelled() and task.exception() is not None:
                connection.close("error")

        pump.add_done_callback(on_pump_done)
        tasks = [watcher, pump]
        connection.flush()
        try:
            if prelude is not None:
                await prelude()
            await asyncio.wait([closed_signal, *tasks], return_when=asyncio.FIRST_COMPLETED)
            if not connection.closed:
                # A task ended without closing: receive() or send() failed (re-raised below).
                connection.close("error")
            if connection.close_reason != "client":
                await asyncio.wait([pump], timeout=connection.final_timeout())
        finally:
            self._closed_signal = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
