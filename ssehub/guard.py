"""What ``ssehub serve`` asks of uvicorn against hostile clients: slow or oversized request heads, proxy trust.

uvicorn (0.55, httptools protocol) has a keep-alive timeout between requests but no limit on how long a client
may take to send a request's head, nor on how large the head may be: a client that connects and dribbles
header bytes (slow-loris) holds its socket forever, and a megabyte header is buffered whole. Its h11 protocol
bounds the head's size (``h11_max_incomplete_event_size``) but not its time either.

:class:`GuardedHttpToolsProtocol` adds both, without patching uvicorn: it is uvicorn's own httptools protocol,
subclassed and selected through uvicorn's public ``http`` option (:func:`uvicorn_options`).

- **Head timeout** (``SSEHUB_HEADER_TIMEOUT``): from the connection's start (or a keep-alive request's first
  byte) to the end of its headers. Past it: 408 JSON if part of a request arrived, a silent close otherwise.
- **Head size** (``SSEHUB_MAX_HEADER_BYTES``): a request line over it answers 414, headers over it 431, as JSON.
- **Lingering close**: a refusal is written, the sending side is shut (FIN), and what the client still sends
  is read and thrown away (up to ``SSEHUB_MAX_DRAIN_BYTES``, at most :data:`LINGER_SECONDS`) before the socket
  closes, so that the client reads the answer instead of a connection reset. uvicorn's own 400 for a request
  it cannot parse gets the same treatment and a JSON body.

The stream requests themselves are untouched: the request cycle is uvicorn's, so the direct stream writer
still recognizes it. What this relies on (the parser callbacks ``on_message_begin``, ``on_url``, ``on_header``,
``on_headers_complete``, ``on_message_complete``, ``send_400_response``, and the ``transport``, ``flow``,
``cycle``, ``loop`` attributes) is pinned by ``tests/test_client_limits.py`` together with the behaviour, within
the uvicorn versions ``pyproject.toml`` allows.

Trusted proxies (``SSEHUB_TRUSTED_PROXIES``) are one rule in one place: :func:`uvicorn_options` hands the list
to uvicorn's proxy-headers middleware, which takes the client address from ``X-Forwarded-For`` (the rightmost
address that is not a trusted proxy) only when the peer is one of them; ssehub's per-client limits then read
``scope["client"]``. An empty list turns proxy headers off.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import json
import sys
import termios
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ssehub._uvicorn import NativeStreams, native_streams

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from ssehub.settings import Settings

#: Longest a refused connection lingers, reading and discarding, before it closes.
LINGER_SECONDS = 2.0
#: Head periods a connection gets, at most, while its bytes wait unread because the server is busy.
MAX_HEAD_EXTENSIONS = 3


def _bytes_waiting(transport: asyncio.BaseTransport) -> bool:
    """Whether the connection's socket holds received bytes the server has not read yet (``FIONREAD``)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        data = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError):
        return False
    return int.from_bytes(data, sys.byteorder) > 0


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing once a refusal was written."""


def refusal_bytes(status: int, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 answer with ssehub's JSON error body that closes the connection."""
    body = json.dumps({"error": message, "code": code}).encode()
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % (
        status,
        HTTPStatus(status).phrase.encode(),
        len(body),
    )
    return head + body


class _GuardState:
    """A connection's head limits and where its current request head stands."""

    __slots__ = (
        "boundary",
        "discarded",
        "extensions",
        "head_parsed",
        "head_raw",
        "head_started",
        "head_timer",
        "header_timeout",
        "in_head",
        "linger_timer",
        "max_drain",
        "max_head",
        "native",
        "refused",
    )

    def __init__(
        self, header_timeout: float, max_header_bytes: int, max_drain_bytes: int, native: NativeStreams | None
    ) -> None:
        self.native = native  # ssehub's own stream path (ssehub/_uvicorn.py), shared by the process's connections
        self.header_timeout = header_timeout
        self.max_head = max_header_bytes
        self.max_drain = max_drain_bytes
        self.in_head = True  # the next bytes belong to a request head
        self.head_started = False  # a byte of the current head arrived
        self.head_raw = 0  # bytes of data chunks that began and ended inside the head
        self.head_parsed = 0  # bytes of the request line and headers seen by the parser callbacks
        self.boundary = False  # a head or a message ended while the current chunk was parsed
        self.head_timer: asyncio.TimerHandle | None = None
        self.linger_timer: asyncio.TimerHandle | None = None
        self.refused = False
        self.discarded = 0
        self.extensions = 0  # head periods added because the request waited unread in the socket


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head timeout, a head size limit and a lingering close.

    Build it through :class:`GuardedProtocolFactory` (uvicorn passes ``config``, ``server_state``,
    ``app_state``; the factory adds the limits).
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        header_timeout: float,
        max_header_bytes: int,
        max_drain_bytes: int,
        native: NativeStreams | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # One attribute for all of the guard's state: uvicorn's protocol has ~28 attributes, and an instance
        # with more than 30 loses CPython's shared-key dictionary (about 1.3 KiB more per open connection).
        self._guard = _GuardState(header_timeout, max_header_bytes, max_drain_bytes, native)

    # -- connection ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        guard = self._guard
        for timer in (guard.head_timer, guard.linger_timer):
            if timer is not None:
                timer.cancel()
        guard.head_timer = guard.linger_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        guard = self._guard
        if guard.refused:
            # Lingering: the answer is written; read and drop what the client still sends, up to the bound.
            guard.discarded += len(data)
            if guard.discarded > guard.max_drain:
                self.transport.close()
            return
        began_in_head = guard.in_head
        if began_in_head and data:
            guard.head_started = True
        guard.boundary = False
        super().data_received(data)
        if guard.in_head and guard.head_started and guard.head_timer is None and not guard.refused:
            # A head began in this chunk and did not end in it: its time starts now. (A head that arrives
            # whole, as most do, never arms a timer.)
            self._arm_head_timer()
        if guard.refused or not began_in_head or guard.boundary:
            return
        # The whole chunk was request head and the head is still open: a head that never ends is bounded
        # here (the parser buffers a header's value until it is complete, so callbacks alone would not see it).
        guard.head_raw += len(data)
        if guard.head_raw > guard.max_head:
            self._refuse(431, "HEADERS_TOO_LARGE", f"the request headers are larger than {guard.max_head} bytes")

    def send_400_response(self, msg: str) -> None:
        if self._guard.refused:
            return  # a parser callback refused and stopped the parser: the answer is already written
        self._refuse(400, "BAD_REQUEST", f"invalid HTTP request: {msg}")

    # -- parser callbacks ---------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._guard.head_started = True  # the head timer starts at the end of this chunk if the head is not complete

    def on_url(self, url: bytes) -> None:
        guard = self._guard
        guard.head_parsed += len(url)
        if guard.head_parsed > guard.max_head:
            self._refuse(414, "URI_TOO_LONG", f"the request line is longer than {guard.max_head} bytes")
            raise _Refused
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        guard = self._guard
        guard.head_parsed += len(name) + len(value) + 4
        if guard.head_parsed > guard.max_head:
            self._refuse(431, "HEADERS_TOO_LARGE", f"the request headers are larger than {guard.max_head} bytes")
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        guard = self._guard
        guard.in_head = False
        guard.boundary = True
        self._cancel_head_timer()
        if guard.native is not None and guard.native.serve(self):
            return  # a stream request, served by ssehub itself on this connection
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        guard = self._guard
        guard.in_head = guard.boundary = True
        guard.head_started = False
        guard.head_raw = guard.head_parsed = guard.extensions = 0

    # -- refusals -----------------------------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._guard.head_timer = self.loop.call_later(self._guard.header_timeout, self._on_head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._guard.head_timer is not None:
            self._guard.head_timer.cancel()
            self._guard.head_timer = None

    def _on_head_timeout(self) -> None:
        guard = self._guard
        guard.head_timer = None
        if not guard.in_head or self.transport.is_closing():
            return
        if guard.extensions < MAX_HEAD_EXTENSIONS and _bytes_waiting(self.transport):
            # The client's bytes are here, unread: the server is behind (a reconnect storm keeps the event loop
            # busy for seconds, and a due timer runs before the next read), not the client. Give it another
            # period, a bounded number of times.
            guard.extensions += 1
            self._arm_head_timer()
            return
        if not self._guard.head_started:
            # Nothing of a request arrived: an idle connection, closed without an answer (uvicorn's keep-alive
            # timeout covers idle time after a response; this covers a connection that never sent anything).
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()
            return
        self._refuse(
            408, "REQUEST_TIMEOUT", f"the request headers did not arrive within {self._guard.header_timeout:g} s"
        )

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer with a JSON error and close the connection gently (see the module docstring)."""
        if self._guard.refused:
            return
        self._guard.refused = True
        self._cancel_head_timer()
        transport = self.transport
        if transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A response (a stream) is in flight on this connection: no room for another answer.
            transport.close()
            return
        self.logger.debug("refusing a request from %s: %s %s", self.client, status, code)  # a flood must not flood logs
        transport.write(refusal_bytes(status, code, message))
        if transport.can_write_eof():
            transport.write_eof()
        self.flow.resume_reading()
        self._guard.linger_timer = self.loop.call_later(LINGER_SECONDS, transport.close)


class GuardedProtocolFactory:
    """Builds :class:`GuardedHttpToolsProtocol` for uvicorn (its ``http`` option), with the given limits.

    An instance rather than a class made on the fly, so that it pickles for worker processes.
    """

    def __init__(
        self, header_timeout: float, max_header_bytes: int, max_drain_bytes: int, *, native: bool = True
    ) -> None:
        self.header_timeout = header_timeout
        self.max_header_bytes = max_header_bytes
        self.max_drain_bytes = max_drain_bytes
        self.native = native
        self._native: NativeStreams | bool | None = native  # resolved on the first connection, per process

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_native"] = self.native  # resolved again in the process that unpickles it
        return state

    def __call__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> GuardedHttpToolsProtocol:
        native = self._native
        if isinstance(native, bool):
            native = self._native = native_streams(config) if native else None
        return GuardedHttpToolsProtocol(
            config,
            server_state,
            app_state,
            _loop,
            header_timeout=self.header_timeout,
            max_header_bytes=self.max_header_bytes,
            max_drain_bytes=self.max_drain_bytes,
            native=native,
        )


def trusted_proxy_networks(settings: Settings) -> list[str]:
    """``SSEHUB_TRUSTED_PROXIES`` as normalized networks (``10.0.0.1/8`` becomes ``10.0.0.0/8``)."""
    return [str(ipaddress.ip_network(entry, strict=False)) for entry in settings.trusted_proxies]


def uvicorn_options(settings: Settings, *, native: bool = True) -> dict[str, Any]:
    """The ``uvicorn.Config`` options that apply ssehub's settings on slow clients, head size and proxies.

    ``ssehub serve`` uses them; pass them too when you run ``create_app`` under your own uvicorn::

        uvicorn.Config(create_app(settings), host=..., port=..., **uvicorn_options(settings))
    """
    networks = trusted_proxy_networks(settings)
    return {
        "http": GuardedProtocolFactory(
            settings.header_timeout, settings.max_header_bytes, settings.max_drain_bytes, native=native
        ),
        "proxy_headers": bool(networks),
        "forwarded_allow_ips": networks,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }
