"""Helpers for testing applications built on ssehub (and ssehub itself).

- :class:`SSEParser`: a client-side parser written from the WHATWG "event stream interpretation" algorithm,
  independent of ssehub's encoder, so a test can check what a browser would see.
- :func:`running_server`: a real uvicorn server for an ASGI app on a free loopback port, in a thread.
- :class:`EventStream`: reads an SSE response incrementally with a bounded wait for every event
  (``httpx.ASGITransport`` buffers whole bodies and cannot read an endless stream).

``EventStream`` needs ``httpx`` (installed with ``ssehub[test]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from ssehub._types import ASGIApp


@dataclass(frozen=True, slots=True)
class SSEMessage:
    """One dispatched event as a client sees it. ``id`` is the client's last event id after this event."""

    event: str
    data: str
    id: str
    retry: int | None = None


class SSEParser:
    """Incremental, spec-following SSE parser (WHATWG HTML, "Interpreting an event stream").

    Feed it bytes in chunks of any size; it handles CR, LF and CRLF line ends (also split across chunks), a
    leading BOM, comments, ``retry`` with digits only and ids with NUL ignored.
    """

    def __init__(self) -> None:
        self._decoder_buffer = b""
        self._text = ""
        self._started = False
        self._pending_cr = False
        self._data: list[str] = []
        self._event = ""
        self._last_id = ""
        self._retry: int | None = None
        self.comments: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        """Parse ``chunk``; return the events it completed."""
        raw = self._decoder_buffer + chunk
        # Keep an incomplete UTF-8 sequence for the next chunk.
        cut = len(raw)
        for back in range(1, min(4, len(raw)) + 1):
            byte = raw[-back]
            if byte & 0xC0 == 0x80:
                continue
            if byte >= 0xC0:
                needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
                if back < needed:
                    cut = len(raw) - back
            break
        self._decoder_buffer = raw[cut:]
        text = raw[:cut].decode("utf-8", errors="replace")
        if not self._started and text:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        out: list[SSEMessage] = []
        buffer = self._text + text
        start = 0
        i = 0
        while i < len(buffer):
            ch = buffer[i]
            if ch == "\n" and self._pending_cr:
                # The LF of a CRLF whose CR ended the previous line.
                self._pending_cr = False
                start = i + 1
            elif ch in "\r\n":
                self._pending_cr = ch == "\r"
                self._line(buffer[start:i], out)
                start = i + 1
            else:
                self._pending_cr = False
            i += 1
        self._text = buffer[start:]
        return out

    def _line(self, line: str, out: list[SSEMessage]) -> None:
        if line == "":
            if self._data:
                out.append(SSEMessage(self._event or "message", "\n".join(self._data), self._last_id, self._retry))
            self._data = []
            self._event = ""
            self._retry = None
            return
        if line.startswith(":"):
            self.comments.append(line[1:].removeprefix(" "))
            return
        name, sep, value = line.partition(":")
        if sep:
            value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:
                self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)


def parse_sse(data: bytes) -> list[SSEMessage]:
    """Parse a whole byte string; a trailing incomplete event is discarded, as clients do."""
    return SSEParser().feed(data)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running_server(app: ASGIApp, *, timeout: float = 10.0, **config: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yield its base URL.

    Raises:
        RuntimeError: the server did not start within ``timeout`` seconds.
    """
    import uvicorn

    port = free_port()
    options: dict[str, Any] = {"log_level": "warning", "timeout_graceful_shutdown": 2, **config}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


class EventStream:
    """Reads events from an open streaming ``httpx`` response, each wait bounded."""

    def __init__(self, response: httpx.Response, default_timeout: float = 5.0) -> None:
        self.response = response
        self.parser = SSEParser()
        self._chunks = response.aiter_raw()
        self._ready: deque[SSEMessage] = deque()
        self._timeout = default_timeout
        self.ended = False

    async def aclose(self) -> None:
        """Stop reading (the response itself is closed by its owner)."""
        await self._chunks.aclose()  # type: ignore[attr-defined]

    async def next(self, timeout: float | None = None) -> SSEMessage:
        """The next event (heartbeats included).

        Raises:
            TimeoutError: none arrived in time.
            EOFError: the server ended the stream.
        """
        async with asyncio.timeout(timeout if timeout is not None else self._timeout):
            while not self._ready:
                try:
                    chunk = await anext(self._chunks)
                except StopAsyncIteration:
                    self.ended = True
                    raise EOFError("the server ended the stream") from None
                self._ready.extend(self.parser.feed(chunk))
        return self._ready.popleft()

    async def next_event(self, timeout: float | None = None, skip: tuple[str, ...] = ("heartbeat",)) -> SSEMessage:
        """The next event whose type is not in ``skip``."""
        deadline = time.monotonic() + (timeout if timeout is not None else self._timeout)
        while True:
            message = await self.next(max(0.0, deadline - time.monotonic()))
            if message.event not in skip:
                return message

    async def take(self, count: int, timeout: float | None = None) -> list[SSEMessage]:
        """The next ``count`` events that are not heartbeats."""
        deadline = time.monotonic() + (timeout if timeout is not None else self._timeout)
        return [await self.next_event(max(0.0, deadline - time.monotonic())) for _ in range(count)]

    async def wait_end(self, timeout: float | None = None) -> list[SSEMessage]:
        """Read until the server ends the stream; return the events read on the way."""
        events: list[SSEMessage] = []
        deadline = time.monotonic() + (timeout if timeout is not None else self._timeout)
        with contextlib.suppress(EOFError):
            while True:
                events.append(await self.next(max(0.0, deadline - time.monotonic())))
        return events


@contextlib.asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, url: str, *, headers: dict[str, str] | None = None, timeout: float = 5.0
) -> AsyncIterator[EventStream]:
    """Open a stream and yield an :class:`EventStream` over it (whatever the status: check ``.response``).

    The stream stays open until the block exits, even if the caller drops its reference: this frame keeps the
    reader alive (a collected, unfinished ``aiter_raw`` generator would close the response under the caller).
    """
    async with client.stream("GET", url, headers=headers, timeout=timeout) as response:
        stream = EventStream(response, timeout)
        try:
            yield stream
        finally:
            await stream.aclose()
