"""The fast paths on uvicorn: the only module that knows uvicorn's internals or frames HTTP chunks.

When a stream is served by uvicorn's httptools protocol over HTTP/1.1 and ``send`` is uvicorn's own (nothing
wraps it), the response starts and ends through ASGI ``send``, but body chunks are written straight to the
transport, framed for chunked transfer encoding once per event (``Event.chunk``) rather than once per
connection, and honouring uvicorn's flow control (a paused transport means a slow client). No task runs per
stream: the stream's own task waits in ``receive()``, which returns on a disconnect and when the writer sets
uvicorn's message event.

What this relies on (pinned by ``tests/test_uvicorn_contract.py``; ``pyproject.toml`` bounds uvicorn to the
versions that test passed on, and :data:`TESTED` names them): ``send`` is the bound method
``RequestResponseCycle.send`` of ``uvicorn.protocols.http.httptools_impl``, and the cycle has ``transport``,
``flow`` (with ``write_paused`` and ``drain()``), ``disconnected``, ``chunked_encoding`` (``True`` once a
chunked response started) and ``message_event`` (an ``asyncio.Event`` that ``receive()`` waits on).
Anything else, and the portable writer is used, with the reason logged.

Request bodies (:func:`receive_ready`): ``receive`` is the bound method ``RequestResponseCycle.receive``, which
returns at once when ``message_event`` is set (the body, or its first part, has arrived). A publish whose body
came with its head, as most do, is then read without arming a timer; anything else is read under the timeout.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from importlib import metadata
from typing import TYPE_CHECKING, Any

from ssehub._types import Receive, Scope, Send
from ssehub.writer import PortableWriter, Prelude, Writer

if TYPE_CHECKING:
    from ssehub.connection import Connection

logger = logging.getLogger("ssehub.uvicorn")

#: uvicorn versions (inclusive lower, exclusive upper bound) the fast path was tested on.
TESTED = ((0, 34), (0, 56))
_CYCLE = ("uvicorn.protocols.http.httptools_impl", "RequestResponseCycle")
_ATTRIBUTES = ("transport", "flow", "disconnected", "chunked_encoding", "message_event")


def chunk(frame: bytes) -> bytes:
    """``frame`` framed as one HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(frame), frame)


@functools.cache
def _version() -> tuple[int, ...] | None:
    # Read once per process: importlib.metadata reads and parses files on every call, which cost about a third
    # of the open path's time when it ran per stream.
    try:
        text = metadata.version("uvicorn")
    except metadata.PackageNotFoundError:
        return None
    parts: list[int] = []
    for part in text.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def receive_ready(receive: Receive) -> bool:
    """Whether awaiting ``receive`` returns at once: it is uvicorn's httptools ``receive`` and a message waits.

    ``False`` whenever unsure (another server, a wrapped ``receive``, a body still on its way).
    """
    cycle = getattr(receive, "__self__", None)
    kind = type(cycle)
    if (kind.__module__, kind.__name__) != _CYCLE:
        return False
    event = getattr(cycle, "message_event", None)
    return isinstance(event, asyncio.Event) and event.is_set()


def version_supported(version: tuple[int, ...] | None = None) -> bool:
    """Whether a uvicorn version (the installed one by default) is inside :data:`TESTED`."""
    found = _version() if version is None else version
    return found is not None and TESTED[0] <= found < TESTED[1]


def direct_writer(send: Send, scope: Scope) -> DirectWriter | str:
    """A :class:`DirectWriter` for this stream, or the reason the fast path cannot serve it."""
    cycle = getattr(send, "__self__", None)
    kind = type(cycle)
    if (kind.__module__, kind.__name__) != _CYCLE:
        return "send is not uvicorn's httptools request cycle (another server, h11, or middleware wrapping send)"
    if scope.get("http_version") != "1.1":
        return f"HTTP/{scope.get('http_version')} (the fast path writes HTTP/1.1 chunks)"
    missing = [name for name in _ATTRIBUTES if not hasattr(cycle, name)]
    if missing:
        return f"uvicorn's request cycle lacks {', '.join(missing)}"
    if not version_supported():
        return f"uvicorn {'.'.join(map(str, _version() or ()))} is outside the tested range {TESTED}"
    return DirectWriter(send, cycle)


class DirectWriter(Writer):
    """Writes body chunks straight to uvicorn's transport (see the module docstring)."""

    __slots__ = ("_cycle", "_task")

    chunked = True
    name = "direct"

    def __init__(self, send: Send, cycle: Any) -> None:
        super().__init__(send)
        self._cycle = cycle
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Writer:
        if self._cycle.chunked_encoding is not True:
            # uvicorn chose another framing for this response (never seen; kept safe).
            logger.info("stream not on the fast path: uvicorn did not choose chunked encoding")
            return PortableWriter(self.send)
        return self

    def wire(self, frame: bytes) -> bytes:
        return chunk(frame)

    @property
    def busy(self) -> bool:
        return self._task is not None

    def write(self, connection: Connection) -> None:
        if self._task is not None:
            return  # a write waits for the transport to drain; it takes the rest when it runs
        cycle = self._cycle
        if cycle.disconnected:
            connection.close("client")
            return
        if cycle.flow.write_paused:
            self._task = asyncio.get_running_loop().create_task(self._drain_then_write(connection))
            return
        cycle.transport.write(connection.take())

    async def _drain_then_write(self, connection: Connection) -> None:
        """The slow path: wait for uvicorn's flow control, then write what has queued meanwhile."""
        cycle = self._cycle
        try:
            while connection.queued and not cycle.disconnected:
                if cycle.flow.write_paused:
                    await cycle.flow.drain()
                    continue
                cycle.transport.write(connection.take())
        finally:
            self._task = None
            connection.notify_drained()
        if cycle.disconnected:
            connection.close("client")

    def wake(self) -> None:
        # The stream's task waits in uvicorn's receive(): waking it makes it see the connection closed.
        self._cycle.message_event.set()

    async def run(self, connection: Connection, receive: Receive, prelude: Prelude | None) -> None:
        try:
            connection.flush()
            if prelude is not None:
                await prelude()
            while not connection.closed:
                message = await receive()
                if message["type"] == "http.disconnect":
                    connection.close("client")
            if connection.close_reason != "client":
                connection.flush()
                if self._task is not None:
                    await asyncio.wait([self._task], timeout=connection.final_timeout())
        finally:
            task = self._task
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
