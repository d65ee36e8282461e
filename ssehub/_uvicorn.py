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

Native streams (:class:`NativeStreams`, under ``ssehub serve``'s protocol, ``ssehub/guard.py``) go further: a
plain stream request is answered on uvicorn's connection without its request cycle. They rely on uvicorn's
httptools protocol having ``parser``, ``url``, ``headers``, ``scope``, ``expect_100_continue``, ``root_path``,
``limit_concurrency``, ``cycle``, ``loop``, ``tasks``, ``transport``, ``flow``, ``server_state`` (its
``default_headers``), ``access_log``/``access_logger`` and ``on_response_complete()``, and on its using of a cycle
only ``response_complete``, ``keep_alive``, ``more_body``, ``body``, ``disconnected`` and ``message_event.set()``
(``tests/test_uvicorn_contract.py`` pins these too).

Request bodies (:func:`receive_ready`): ``receive`` is the bound method ``RequestResponseCycle.receive``, which
returns at once when ``message_event`` is set (the body, or its first part, has arrived). A publish whose body
came with its head, as most do, is then read without arming a timer; anything else is read under the timeout.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import urllib.parse
from http import HTTPStatus
from importlib import metadata
from typing import TYPE_CHECKING, Any

import httptools
from starlette.responses import Response
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from ssehub._types import ASGIApp, Message, Receive, Scope, Send
from ssehub.writer import PortableWriter, Prelude, Writer

if TYPE_CHECKING:
    from collections.abc import Iterable

    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from ssehub.app import App
    from ssehub.connection import Connection
    from ssehub.endpoints import OpenedStream, StreamEndpoint

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
        if cycle.disconnected or cycle.transport.is_closing():
            # (uvicorn reports a disconnect to the newest cycle only: one pipelined behind a stream hides it.)
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
        if cycle.disconnected or cycle.transport.is_closing():
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
            await self.settle(connection)
        finally:
            await self.stop()

    async def settle(self, connection: Connection) -> None:
        """The stream closed: unless the client left, hand what is queued to the transport, waiting at most
        the connection's final timeout for flow control (:attr:`busy` tells whether it all went)."""
        if connection.close_reason != "client":
            connection.flush()
            if self._task is not None:
                await asyncio.wait([self._task], timeout=connection.final_timeout())

    async def stop(self) -> None:
        """Cancel a write still waiting for the transport to drain."""
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


# -- native streams: ssehub serves stream requests on uvicorn's connection itself ---------------------------


async def _refuse_send(message: Message) -> None:
    raise RuntimeError("a native stream is not written through ASGI send")


async def _nothing(scope: Scope, receive: Receive, send: Send) -> None:
    """The app behind the proxy-headers middleware on the native path: only its changes to the scope count."""


class NativeWriter(DirectWriter):
    """The direct writer of a :class:`NativeStream`: the same writes, with the stream standing in for the cycle."""

    __slots__ = ()

    name = "native"

    def __init__(self, stream: NativeStream) -> None:
        super().__init__(_refuse_send, stream)


class NativeStreams:
    """Which requests ``ssehub serve`` answers itself on uvicorn's connection, without an ASGI request cycle.

    A stream open is the hot path of a reconnect storm, and a stream lives for minutes: uvicorn's request cycle
    (its objects, two events, a task and the coroutine frames of every layer the request passes) costs time per
    open and memory for as long as the stream lives. A plain ``GET`` of a stream path over HTTP/1.1 keep-alive,
    with no body, no upgrade and nothing pipelined ahead of it, is therefore served here: the same checks and
    :meth:`~ssehub.endpoints.StreamEndpoint.open` as the ASGI path, then the response head and the first events in one
    write; a short task runs the open and the replay, and after that nothing per stream waits anywhere: the
    fan-out writes to the transport, and the protocol's callbacks report a disconnect. Anything else takes
    uvicorn's path unchanged.

    Built by :func:`native_streams` once per process for the guard protocol (``ssehub/guard.py``).
    """

    __slots__ = ("_app", "_proxy")

    def __init__(self, app: App, proxy: ASGIApp | None) -> None:
        self._app = app
        self._proxy = proxy

    def serve(self, protocol: HttpToolsProtocol) -> bool:
        """Take the request whose head ``protocol`` just parsed, if it is a stream request this path serves."""
        parser = protocol.parser
        if (
            parser.get_method() != b"GET"
            or parser.get_http_version() != "1.1"
            or not parser.should_keep_alive()
            or parser.should_upgrade()
            or protocol.expect_100_continue
            or protocol.root_path
            or protocol.limit_concurrency is not None
            or (protocol.cycle is not None and not protocol.cycle.response_complete)  # pipelined behind a response
        ):
            return False
        try:
            parsed = httptools.parse_url(protocol.url)
            path = parsed.path.decode("ascii")
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
            return False  # uvicorn's own path answers it
        if "%" in path:
            path = urllib.parse.unquote(path)
        found = self._app.stream_target(path)
        if found is None:
            return False
        for name, _ in protocol.headers:
            if name == b"content-length" or name == b"transfer-encoding":
                return False  # a GET with a body: uvicorn reads it
        endpoint, path_params, root_path = found
        scope: Scope = protocol.scope  # type: ignore[assignment]  # uvicorn's TypedDict, used as a plain scope
        scope["method"] = "GET"
        scope["path"] = path
        scope["raw_path"] = parsed.path
        scope["query_string"] = parsed.query or b""
        # What the mount's and the route's matching add on the ASGI path.
        scope.update(path_params=path_params, root_path=root_path, app_root_path="")
        stream = NativeStream(protocol)
        protocol.cycle = stream  # type: ignore[assignment]
        task = protocol.loop.create_task(stream.run(endpoint, scope, self._proxy))
        # uvicorn's shutdown waits for (and in the end cancels) the tasks it knows, as for its own cycles.
        protocol.tasks.add(task)
        task.add_done_callback(protocol.tasks.discard)
        return True


class NativeStream:
    """One stream on uvicorn's connection (see :class:`NativeStreams`).

    It stands in the protocol's ``cycle`` attribute, so it has what the protocol uses of a cycle
    (``response_complete``, ``keep_alive``, ``more_body``, ``body``, ``disconnected``, ``message_event``) and what
    :class:`DirectWriter` uses (``transport``, ``flow``, ``disconnected``, ``message_event``). The protocol and
    the writer call ``message_event.set()`` when something happened: the request's end, a disconnect, the
    connection closed by the hub; this stream is its own ``message_event``.
    """

    __slots__ = (
        "_ending",
        "_opened",
        "_opening",
        "_writer",
        "body",
        "disconnected",
        "flow",
        "keep_alive",
        "more_body",
        "protocol",
        "response_complete",
        "transport",
    )

    chunked_encoding = True

    def __init__(self, protocol: HttpToolsProtocol) -> None:
        self.protocol = protocol
        self.transport = protocol.transport
        self.flow = protocol.flow
        self.disconnected = False
        self.response_complete = False
        self.keep_alive = True
        self.more_body = True
        self.body = b""
        self._opened: OpenedStream | None = None
        self._opening = True
        self._ending: asyncio.Task[Any] | None = None
        self._writer = NativeWriter(self)

    @property
    def message_event(self) -> NativeStream:
        return self

    def set(self) -> None:
        """Something happened on the connection: end the stream if it closed or the client left."""
        opened = self._opened
        if opened is None:
            return  # the request's own end, or the open is still under way (it looks at ``disconnected`` after)
        connection = opened.sub.connection
        if self.disconnected:
            connection.close("client")  # calls back here through the writer's wake()
        if connection.closed and not self._opening and self._ending is None:
            # Not inline: this runs inside the fan-out or the protocol's callbacks.
            self._ending = asyncio.get_running_loop().create_task(self._end(opened))
            self.protocol.tasks.add(self._ending)
            self._ending.add_done_callback(self.protocol.tasks.discard)

    async def run(self, endpoint: StreamEndpoint, scope: Scope, proxy: ASGIApp | None) -> None:
        """Open the stream, write its head and first events, replay what it missed; then return (it lives on)."""
        try:
            if proxy is not None:
                await proxy(scope, _no_receive, _refuse_send)  # trusted proxies: the client's address
            opened = await endpoint.open(scope, writer=self._writer)
        except Exception:
            # The server's boundary, as uvicorn's own request cycle has it: an unexpected error is logged with
            # its traceback and answered 500 (cancellation is not an Exception and passes through).
            logger.exception("opening a stream failed")
            self._log_access(scope, 500)
            self._answer(500, [(b"content-type", b"application/json")], _INTERNAL_ERROR, close=True)
            return
        if isinstance(opened, Response):
            self._log_access(scope, opened.status_code)
            self._answer(opened.status_code, opened.raw_headers, bytes(opened.body), close=False)
            return
        self._opened = opened
        connection = opened.sub.connection
        try:
            if self.disconnected:
                connection.close("client")
            else:
                connection.begin()
                self._log_access(scope, 200)
                # The head and what is queued (``connected``, maybe ``reset``) in one write.
                self.transport.write(self._head(opened.headers) + connection.take())
                await opened.sub.replay()
        except BaseException:
            self._opened = None  # released here: nothing may end it a second time
            connection.close("error")
            self.transport.close()
            opened.release()
            raise
        finally:
            self._opening = False
        if connection.closed:
            self._ending = asyncio.current_task()
            await self._end(opened)

    async def _end(self, opened: OpenedStream) -> None:
        """End the response so that the client reconnects and resumes (unless it left); release the stream."""
        connection = opened.sub.connection
        writer = self._writer
        transport = self.transport
        try:
            if connection.close_reason == "client" or self.disconnected:
                return
            await writer.settle(connection)
            if self.disconnected or transport.is_closing():
                return
            if writer.busy:
                # As on uvicorn's path: an incomplete response and a closed socket, which is what we want here.
                logger.warning(
                    "connection %s (%s): the client does not read; dropping it", connection.id, connection.close_reason
                )
                transport.close()
                return
            transport.write(b"0\r\n\r\n")
            self.response_complete = True
            if self.keep_alive:
                self.protocol.on_response_complete()  # keep-alive: the next request, or the idle timeout
            else:
                transport.close()
        finally:
            try:
                await writer.stop()
            finally:
                opened.release()

    def _log_access(self, scope: Scope, status: int) -> None:
        """uvicorn's access-log line for this request, as its request cycle writes it (only when it logs them)."""
        protocol = self.protocol
        if protocol.access_log:
            www: Any = scope
            protocol.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(www),
                scope["method"],
                get_path_with_query_string(www),
                scope["http_version"],
                status,
            )

    def _head(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        parts = [b"HTTP/1.1 200 OK\r\n"]
        for name, value in (*self.protocol.server_state.default_headers, *headers):
            parts += (name, b": ", value, b"\r\n")
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")  # the server is shutting down
        parts.append(b"transfer-encoding: chunked\r\n\r\n")
        return b"".join(parts)

    def _answer(self, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes, *, close: bool) -> None:
        """A complete answer (a refusal) written as uvicorn would; the connection stays open unless ``close``."""
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())]
        close = close or not self.keep_alive
        for name, value in (*self.protocol.server_state.default_headers, *headers):
            if name == b"connection":
                close = close or value.lower() == b"close"
                continue
            parts += (name, b": ", value, b"\r\n")
        if close:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", body)
        self.response_complete = True
        if self.transport.is_closing():
            return
        self.transport.write(b"".join(parts))
        if close:
            self.transport.close()
        else:
            self.protocol.on_response_complete()


_INTERNAL_ERROR = b'{"error": "internal server error", "code": "INTERNAL_ERROR"}'


async def _no_receive() -> Message:
    raise RuntimeError("a native stream does not receive through ASGI")


def native_streams(config: Config) -> NativeStreams | None:
    """The native stream path for the app uvicorn serves, or ``None`` when the app is not ssehub's standalone
    app (behind at most uvicorn's proxy-headers middleware), the fast path is off, or uvicorn is untested."""
    from ssehub.app import App

    app: Any = getattr(config, "loaded_app", None)  # set by Config.load(), which uvicorn runs before serving
    behind_proxy = False
    if isinstance(app, ProxyHeadersMiddleware):
        app, behind_proxy = app.app, True
    if not isinstance(app, App) or not app.hub.settings.fast_path or not version_supported():
        return None
    # uvicorn's own middleware, on an app that does nothing: it sets the scope's client and scheme.
    proxy: Any = ProxyHeadersMiddleware(_nothing, config.forwarded_allow_ips) if behind_proxy else None  # type: ignore[arg-type]
    return NativeStreams(app, proxy)
