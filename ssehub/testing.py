"""Helpers for testing applications built on ssehub (and ssehub itself).

- :class:`SSEParser`: a client-side parser written from the WHATWG "event stream interpretation" algorithm,
  independent of ssehub's encoder, so a test can check what a browser would see (it lives in
  :mod:`ssehub.parser`, shared with the Python client, and is re-exported here).
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
from typing import TYPE_CHECKING, Any

# Re-exported: the parser moved to ssehub.parser (the Python client uses it too); tests keep importing it here.
from ssehub.parser import SSEMessage as SSEMessage
from ssehub.parser import SSEParser as SSEParser
from ssehub.parser import parse_sse as parse_sse

if TYPE_CHECKING:
    import httpx

    from ssehub._types import ASGIApp


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
