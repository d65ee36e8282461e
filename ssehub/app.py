"""The HTTP API: Starlette routes over a :class:`~ssehub.hub.Hub`.

Two ways to use it:

- standalone: :func:`create_app` builds an app whose lifespan starts and stops its own hub
  (``ssehub serve`` runs it);
- inside an application: build a ``Hub``, run ``async with hub:`` in your lifespan and mount
  :func:`create_api` at the prefix you like (mounted apps do not get lifespan events of their own).

Every refusal is an HTTP status with a JSON body ``{"error": ..., "code": ...}`` sent before any stream
starts; a stream that started ends only cleanly (the client reconnects and resumes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from json.encoder import encode_basestring
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Mount, Route

from ssehub._types import Receive, Scope, Send
from ssehub.auth import TOKEN_PARAM
from ssehub.client_assets import client_routes
from ssehub.cors import CorsPolicy
from ssehub.demo import Demo
from ssehub.echo import echo
from ssehub.events import Event
from ssehub.exceptions import (
    AuthenticationError,
    AuthUnavailableError,
    BrokerUnavailableError,
    ChannelLimitError,
    ConnectionLimitError,
    HubNotRunningError,
    InvalidValueError,
    LimitExceededError,
    PermissionDeniedError,
    UnknownChannelError,
)
from ssehub.hub import Hub
from ssehub.limits import (
    RateLimiter,
    StreamLease,
    StreamLimits,
    client_address,
    drain_before_refusal,
    identity_of,
    rate_key,
    read_body,
)
from ssehub.metrics import create_metrics
from ssehub.settings import Settings
from ssehub.subscription import Subscription
from ssehub.writer import Writer

logger = logging.getLogger("ssehub.app")

#: Query parameters of the stream endpoints that are not filters.
RESERVED_PARAMS = frozenset({"channels", "lastEventId", TOKEN_PARAM})
_PATH_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
_PUBLISH_FIELDS = frozenset({"channel", "event", "data"})
_JSON_CONTENT_TYPE = (b"content-type", b"application/json")
_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one shape of every error ssehub answers."""
    return JSONResponse({"error": message, "code": code}, status_code=status, headers=headers)


def _error_for(exc: Exception) -> JSONResponse:
    """Translate a hub error into its HTTP answer."""
    if isinstance(exc, UnknownChannelError):
        return error_response(404, "UNKNOWN_CHANNEL", str(exc))
    if isinstance(exc, InvalidValueError):
        return error_response(413 if exc.code == "PAYLOAD_TOO_LARGE" else 422, exc.code, str(exc))
    if isinstance(exc, ConnectionLimitError):
        return error_response(503, "MAX_CONNECTIONS", str(exc), {"Retry-After": "5"})
    if isinstance(exc, BrokerUnavailableError):
        return error_response(503, "BROKER_UNAVAILABLE", str(exc), {"Retry-After": "2"})
    if isinstance(exc, HubNotRunningError):
        return error_response(503, "HUB_NOT_RUNNING", str(exc), {"Retry-After": "2"})
    if isinstance(exc, ChannelLimitError):
        return error_response(429, "CHANNEL_LIMIT", str(exc), {"Retry-After": "60"})
    if isinstance(exc, AuthenticationError):
        return error_response(401, exc.code, str(exc), {"WWW-Authenticate": _www_authenticate(exc)})
    if isinstance(exc, PermissionDeniedError):
        return error_response(403, "FORBIDDEN", str(exc))
    if isinstance(exc, AuthUnavailableError):
        return error_response(503, "AUTH_UNAVAILABLE", str(exc), {"Retry-After": "5"})
    if isinstance(exc, LimitExceededError):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
        if exc.close:
            headers["Connection"] = "close"  # the body was left unread: do not parse it as the next request
        return error_response(exc.status, exc.code, str(exc), headers)
    raise exc


def _www_authenticate(exc: AuthenticationError) -> str:
    """RFC 6750: a bare challenge when credentials are missing, ``invalid_token`` when they were refused."""
    if exc.code == "UNAUTHORIZED":
        return 'Bearer realm="ssehub"'
    text = str(exc).encode("ascii", "replace").decode("ascii")
    description = "".join(ch for ch in text if ch.isprintable() and ch not in '"\\')
    return f'Bearer realm="ssehub", error="invalid_token", error_description="{description}"'


_HUB_ERRORS = (
    InvalidValueError,
    ConnectionLimitError,
    BrokerUnavailableError,
    HubNotRunningError,
    ChannelLimitError,
    AuthenticationError,
    PermissionDeniedError,
    AuthUnavailableError,
    LimitExceededError,
)


class StreamEndpoint:
    """``GET`` an SSE stream. A plain ASGI app, so that nothing sits between the fan-out and ``send``.

    Args:
        hub: the hub to subscribe to.
        channels: fixed channels (``/queue``); ``None`` reads ``?channels=`` and falls back to the defaults.
        filter_param: a path parameter that becomes a filter of the same name (``/downloads/{download_id}``).
        limits: open streams per client address and identity, shared by every stream route of an API; its own
            when omitted.
    """

    def __init__(
        self,
        hub: Hub,
        channels: list[str] | None = None,
        filter_param: str | None = None,
        *,
        limits: StreamLimits | None = None,
    ) -> None:
        self.hub = hub
        self.channels = channels
        self.filter_param = filter_param
        settings = hub.settings
        self.cors = CorsPolicy(settings.allowed_origins)
        self.limits = limits or StreamLimits(settings.max_streams_per_client, settings.max_streams_per_identity)

    def _request_args(self, scope: Scope) -> tuple[list[str], dict[str, str], str | None]:
        # Read from the scope as Starlette's Request would (a parameter given twice: the last one wins, as
        # QueryParams has it; a header given twice: the first), without building its multi-dicts per open.
        items = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        params = dict(items)
        if self.channels is not None:
            channels = list(self.channels)
        elif "channels" in params:
            channels = [part.strip() for part in params["channels"].split(",") if part.strip()]
            if not channels:
                raise InvalidValueError(
                    "channels is empty: name one or more channels, separated by commas", "INVALID_CHANNEL"
                )
        else:
            channels = list(self.hub.settings.default_channels)
        filters: dict[str, str] = {}
        for name, value in items:
            if name in RESERVED_PARAMS or name.startswith("_"):
                continue
            if name in filters:
                raise InvalidValueError(f"filter {name!r} is given twice", "INVALID_FILTER")
            filters[name] = value
        if self.filter_param is not None:
            value = scope["path_params"][self.filter_param]
            if _PATH_ID.fullmatch(value) is None:
                raise InvalidValueError(
                    f"invalid {self.filter_param} {value[:80]!r}: use 1-128 of A-Z a-z 0-9 _ . : -", "INVALID_FILTER"
                )
            filters[self.filter_param] = value
        last_event_id = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"last-event-id"), None)
        if last_event_id is None:
            last_event_id = params.get("lastEventId")
        return channels, filters, last_event_id

    async def open(
        self, scope: Scope, *, send: Send | None = None, writer: Writer | None = None
    ) -> OpenedStream | JSONResponse:
        """Check, authenticate and open a stream request: the open stream, or the refusal to answer with.

        Nothing is written here. The caller starts the response with :attr:`OpenedStream.headers`, streams, and
        calls :meth:`OpenedStream.release` (an ASGI ``send`` picks the writer; ``writer`` imposes one).
        A refusal carries the request's CORS headers (a page can read it) and is counted by its code.
        """
        hub = self.hub
        # CORS headers go into this endpoint's own answers (a wrapped send would turn the fast path off).
        cors = self.cors.headers(scope)
        if not hub.settings.enable_sse:
            refusal = error_response(503, "SSE_DISABLED", "server-sent events are disabled (SSEHUB_ENABLE_SSE)")
            return _refusal(hub, refusal, cors)
        try:
            channels, filters, last_event_id = self._request_args(scope)
            # The one auth check of this stream (an open hub reads nothing of the request).
            grant = await hub.auth.stream_grant(HTTPConnection(scope), channels)
            lease = self.limits.acquire(client_address(scope), identity_of(grant))
        except _HUB_ERRORS as exc:
            return _refusal(hub, _error_for(exc), cors)
        try:
            sub = await hub.open(
                channels,
                filters=filters,
                last_event_id=last_event_id,
                send=send,
                scope=scope,
                grant=grant,
                writer=writer,
            )
        except _HUB_ERRORS as exc:
            lease.release()
            return _refusal(hub, _error_for(exc), cors)
        except BaseException:
            lease.release()
            raise
        return OpenedStream(hub, sub, lease, _STREAM_HEADERS + cors if cors else _STREAM_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        opened = await self.open(scope, send=send)
        if isinstance(opened, JSONResponse):
            await opened(scope, receive, send)
            return
        try:
            await send({"type": "http.response.start", "status": 200, "headers": opened.headers})
            await opened.sub.stream(receive)
        finally:
            opened.release()


class OpenedStream:
    """A stream request that passed every check: its subscription, limits lease and response headers."""

    __slots__ = ("headers", "hub", "lease", "sub")

    def __init__(self, hub: Hub, sub: Subscription, lease: StreamLease, headers: list[tuple[bytes, bytes]]) -> None:
        self.hub = hub
        self.sub = sub
        self.lease = lease
        self.headers = headers

    def release(self) -> None:
        """Give back what the stream holds (its subscription, then its count); call it once, when it ended."""
        try:
            self.hub.release(self.sub)
        finally:
            self.lease.release()


def _refusal(hub: Hub, response: JSONResponse, cors: list[tuple[bytes, bytes]]) -> JSONResponse:
    """A stream endpoint's refusal with the request's CORS headers, so that a page can read the error;
    counted by its code (``ssehub_streams_refused_total``)."""
    hub.stats.count_refusal(json.loads(bytes(response.body))["code"])
    response.raw_headers.extend(cors)
    return response


class PublishEndpoint:
    """``POST /publish``. A plain ASGI app, like :class:`StreamEndpoint`: on a busy hub every event is one of
    these requests, so it skips what Starlette adds per request (middleware, ``Request``, ``JSONResponse``),
    about a fifth of a publish's CPU time (docs/performance.md). Its answers are the same bytes: 201 with
    ``{"id", "channel"}``, every refusal as ssehub's JSON error, and the request's CORS headers on both.

    Args:
        hub: the hub to publish to.
        publish_rate: the publish rate limiter, shared with the other endpoints that publish (``/test/echo``).
    """

    def __init__(self, hub: Hub, publish_rate: RateLimiter) -> None:
        self.hub = hub
        self.publish_rate = publish_rate
        self.cors = CorsPolicy(hub.settings.allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # CORS headers go into the answer here (the API's dispatch sends this request past its CORS wrapper).
        cors = self.cors.headers(scope)
        result = await self._publish(scope, receive)
        if isinstance(result, Response):
            result.raw_headers.extend(cors)
            await result(scope, receive, send)
            return
        # What JSONResponse({"id": ..., "channel": ...}) writes, without building an encoder per answer.
        answer = f'{{"id":{encode_basestring(str(result.id))},"channel":{encode_basestring(result.channel)}}}'
        body = answer.encode()
        headers = [(b"content-length", b"%d" % len(body)), _JSON_CONTENT_TYPE]
        await send({"type": "http.response.start", "status": 201, "headers": headers + cors if cors else headers})
        await send({"type": "http.response.body", "body": body})

    async def _publish(self, scope: Scope, receive: Receive) -> Event | JSONResponse:
        """The published event, or the error answer."""
        hub = self.hub
        settings = hub.settings
        try:
            # Headers only: a token in the query string leaks into logs, a cookie invites cross-site requests.
            grant = await hub.auth.authenticate(HTTPConnection(scope), query=False, cookie=False)
            self.publish_rate.check(rate_key(scope, identity_of(grant)))  # per key or subject, else per address
        except _HUB_ERRORS as exc:
            # Refused before the body was read: read and drop it (bounded) so the client reads this, not a reset.
            response = _error_for(exc)
            if not await drain_before_refusal(scope, receive, settings):
                response.headers["Connection"] = "close"
            return response
        try:
            body = await read_body(
                scope,
                receive,
                limit=settings.max_payload_bytes,
                timeout=settings.body_timeout,
                drain=settings.max_drain_bytes,
            )
        except LimitExceededError as exc:
            return _error_for(exc)
        try:
            # json.loads(body, parse_constant=...) without building a decoder per request
            payload = _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
        except ValueError as exc:
            return error_response(422, "INVALID_JSON", f"the body is not valid JSON: {exc}")
        except RecursionError:
            return error_response(422, "INVALID_JSON", "the body is nested too deeply")
        if not isinstance(payload, dict):
            return error_response(422, "INVALID_BODY", 'the body must be a JSON object {"channel", "event", "data"}')
        if payload.keys() != _PUBLISH_FIELDS:
            missing = sorted(_PUBLISH_FIELDS - payload.keys())
            unknown = sorted(payload.keys() - _PUBLISH_FIELDS)
            problems = [f"missing {', '.join(missing)}"] if missing else []
            problems += [f"unknown {', '.join(unknown)}"] if unknown else []
            message = f"the body must have channel, event and data: {'; '.join(problems)}"
            return error_response(422, "INVALID_BODY", message)
        channel, event = payload["channel"], payload["event"]
        if not isinstance(channel, str) or not isinstance(event, str):
            return error_response(422, "INVALID_BODY", "channel and event must be strings")
        try:
            hub.auth.authorize_publish(grant, channel)
            return await hub.publish(channel, event, payload["data"])
        except _HUB_ERRORS as exc:
            return _error_for(exc)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (unknown path, wrong method) in ssehub's JSON shape."""
    assert isinstance(exc, HTTPException)
    code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
    return error_response(exc.status_code, code, exc.detail, dict(exc.headers or {}))


_EXCEPTION_HANDLERS = {HTTPException: _http_error}


async def _health(request: Request) -> Response:
    hub: Hub = request.app.state.hub
    try:
        grant = await hub.auth.authenticate(request, query=False)
    except _HUB_ERRORS as exc:
        return _error_for(exc)
    health = hub.auth.health_view(hub.health(), grant)  # per-channel and broker details for admins only
    return JSONResponse(health, status_code=200 if health["status"] == "ok" else 503)


def _route_path(scope: Scope) -> str:
    """The request path relative to where the API is mounted (``root_path`` stripped), as Starlette routes it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :]
    return path


class StreamTable:
    """The stream routes as a lookup table: a stream's path to its endpoint in one dictionary lookup.

    A reconnect storm is thousands of stream opens at once, and Starlette's matchers try each route's regular
    expression in turn. Exact paths (``/stream``) are a dictionary; a path ending in one parameter
    (``/downloads/{download_id}``) is a prefix and a segment without ``/``, as Starlette's ``str`` convertor
    matches it. Routes of another shape are not in the table and keep Starlette's matching.
    """

    _PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

    def __init__(self, routes: list[tuple[str, StreamEndpoint]]) -> None:
        self._exact: dict[str, StreamEndpoint] = {}
        self._prefixed: list[tuple[str, str, StreamEndpoint]] = []
        for path, endpoint in routes:
            params = self._PARAM.findall(path)
            if not params:
                self._exact[path] = endpoint
                continue
            prefix = path.removesuffix("{" + params[0] + "}")
            if len(params) == 1 and "{" not in prefix and prefix.endswith("/"):
                self._prefixed.append((prefix, params[0], endpoint))

    def find(self, path: str) -> tuple[StreamEndpoint, dict[str, str]] | None:
        """The endpoint for ``path`` and its path parameters, or ``None`` (then Starlette's routing decides)."""
        endpoint = self._exact.get(path)
        if endpoint is not None:
            return endpoint, {}
        for prefix, name, endpoint in self._prefixed:
            if path.startswith(prefix):
                value = path[len(prefix) :]
                if value and "/" not in value:
                    return endpoint, {name: value}
        return None


class API:
    """The HTTP API as one ASGI app, with paths relative to where it is mounted.

    The routes are declared once, in :meth:`routes`. Stream routes and ``POST /publish`` are dispatched
    straight to their endpoint, past Starlette's middleware stack; the rest (health, the client files,
    refusals) go through a small Starlette app. A stream lives for minutes, and every coroutine frame between
    the server and the endpoint lives as long: skipping the middleware stack for streams saves several KiB per
    open connection, and keeps ``send`` unwrapped, which the fast writer needs (see docs/performance.md and
    ``ssehub/_uvicorn.py``). A publish is the one request a busy hub serves for every event: skipping the stack
    and Starlette's routing (the direct routes are looked up by method first) is a good part of its cost.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        settings = hub.settings
        self.cors = CorsPolicy(settings.allowed_origins)
        #: Open streams per client address and identity, shared by every stream route.
        self.stream_limits = StreamLimits(settings.max_streams_per_client, settings.max_streams_per_identity)
        #: Publish requests per second per identity or address, shared by every route that publishes.
        self.publish_rate = RateLimiter(settings.publish_rate, settings.publish_burst)
        routes = self.routes(hub, self.stream_limits, self.publish_rate)
        #: Routes dispatched past Starlette (they add their own CORS headers), by request method.
        self._direct: dict[str, list[Route]] = {}
        for route in routes:
            if isinstance(route, Route) and isinstance(route.app, StreamEndpoint | PublishEndpoint):
                for method in route.methods or ():
                    self._direct.setdefault(method, []).append(route)
        #: Stream opens, the hot path of a reconnect storm, by a dictionary lookup.
        self._streams = StreamTable(
            [(r.path, r.app) for r in routes if isinstance(r, Route) and isinstance(r.app, StreamEndpoint)]
        )
        self._other = Starlette(routes=routes, exception_handlers=_EXCEPTION_HANDLERS)
        self._other.state.hub = hub
        self._other.state.publish_rate = self.publish_rate
        self.state = self._other.state

    @staticmethod
    def routes(
        hub: Hub, limits: StreamLimits | None = None, publish_rate: RateLimiter | None = None
    ) -> list[BaseRoute]:
        """Every route of the API (paths relative to the mount point); the stream routes share ``limits``, and
        ``POST /publish`` counts against ``publish_rate`` (each its own when omitted)."""
        settings = hub.settings
        if limits is None:
            limits = StreamLimits(settings.max_streams_per_client, settings.max_streams_per_identity)
        if publish_rate is None:
            publish_rate = RateLimiter(settings.publish_rate, settings.publish_burst)
        return [
            Route("/stream", StreamEndpoint(hub, limits=limits), methods=["GET"]),
            Route(
                "/downloads/{download_id}",
                StreamEndpoint(hub, ["download:updates"], "download_id", limits=limits),
                methods=["GET"],
            ),
            Route("/queue", StreamEndpoint(hub, ["queue:updates"], limits=limits), methods=["GET"]),
            Route("/health", _health, methods=["GET"]),
            Route("/publish", PublishEndpoint(hub, publish_rate), methods=["POST"]),
            *client_routes(),  # {prefix}/client.js and friends: the browser client (docs/client.md)
            *([Route("/test/echo", echo, methods=["POST"])] if settings.enable_test_endpoints else []),
        ]

    def stream_target(self, path: str) -> tuple[StreamEndpoint, dict[str, str]] | None:
        """The stream endpoint serving a ``GET`` of ``path`` (relative to the mount point), and its path parameters."""
        return self._streams.find(path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method = scope["method"]
            if method == "GET":
                found = self._streams.find(_route_path(scope))
                if found is not None:
                    scope["path_params"] = found[1]
                    await found[0](scope, receive, send)  # adds its own CORS headers
                    return
            direct = self._direct.get(method)
            if direct is not None:
                for route in direct:
                    match, child_scope = route.matches(scope)
                    if match is Match.FULL:
                        scope.update(child_scope)
                        await route.app(scope, receive, send)  # adds its own CORS headers
                        return
            elif self.cors.is_preflight(scope):
                await self.cors.preflight(scope)(scope, receive, send)
                return
            send = self.cors.wrap(scope, send)
        await self._other(scope, receive, send)


def create_api(hub: Hub) -> API:
    """The API (paths relative to the mount point) as an app to mount; the caller runs the hub's lifetime."""
    return API(hub)


class App:
    """A standalone ssehub application: the API at ``settings.prefix`` and a lifespan that runs the hub.

    HTTP requests under the prefix go to the API directly (its stream routes must see uvicorn's own ``send``,
    which Starlette's middleware would wrap); the lifespan and everything else go through Starlette.

    Attributes:
        hub: the hub it serves.
        state: Starlette-style state (``state.hub``).
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.api = API(hub)
        self._prefix = hub.settings.prefix
        self._mount = Mount(self._prefix, app=self.api)
        self.metrics = metrics = create_metrics(hub)  # at /metrics, outside the prefix a proxy forwards
        # With an empty prefix the API's mount matches every path: /metrics must be looked for first.
        self._metrics_path = "/metrics" if metrics is not None else None

        self.demo = demo = Demo(hub) if hub.settings.demo else None

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            # The demo stops first: it publishes through the hub.
            async with hub, metrics or contextlib.nullcontext(), demo or contextlib.nullcontext():
                yield

        routes: list[BaseRoute] = [*(demo.routes if demo is not None else []), self._mount]
        if metrics is not None:
            routes.insert(0, Route("/metrics", metrics, methods=["GET", "HEAD"]))
        self._starlette = Starlette(routes=routes, lifespan=lifespan, exception_handlers=_EXCEPTION_HANDLERS)
        self.state = self._starlette.state
        self.state.hub = hub

    def stream_target(self, path: str) -> tuple[StreamEndpoint, dict[str, str], str] | None:
        """The stream endpoint serving a ``GET`` of ``path`` (the full path), its path parameters, and the
        ``root_path`` the API's mount gives it; ``None`` when ``path`` is not a stream route."""
        if path == self._metrics_path or not path.startswith(self._prefix):
            return None
        found = self.api.stream_target(path[len(self._prefix) :])
        return None if found is None else (found[0], found[1], self._prefix)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != self._metrics_path:
            if scope["method"] == "GET" and not scope.get("root_path"):
                # A stream open, the hot path of a reconnect storm: one dictionary lookup, not two regex matchers.
                found = self.stream_target(scope["path"])
                if found is not None:
                    # What the mount's and the route's matching would have added to the scope.
                    scope.update(path_params=found[1], root_path=found[2], app_root_path="")
                    await found[0](scope, receive, send)
                    return
            match, child_scope = self._mount.matches(scope)
            if match is Match.FULL:
                scope.update(child_scope)
                await self.api(scope, receive, send)
                return
        await self._starlette(scope, receive, send)


def create_app(settings: Settings | None = None, *, hub: Hub | None = None) -> App:
    """A standalone ASGI app: the API mounted at ``settings.prefix``, its hub started and stopped by the lifespan.

    Args:
        settings: configuration; read from the environment when omitted.
        hub: an existing hub (its settings win); a new one is built when omitted.
    """
    return App(hub if hub is not None else Hub(settings))


def create_app_from_env() -> App:
    """Factory for ``uvicorn --factory``: settings from the environment (ssehub's own workers get theirs passed)."""
    return create_app(Settings())


__all__ = [
    "API",
    "App",
    "PublishEndpoint",
    "StreamEndpoint",
    "create_api",
    "create_app",
    "create_app_from_env",
    "error_response",
]
