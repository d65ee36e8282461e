"""The endpoints on the hot paths, as plain ASGI apps dispatched past Starlette: ``GET`` a stream
(:class:`StreamEndpoint`, found by :class:`StreamTable`) and ``POST /publish`` (:class:`PublishEndpoint`).

Every refusal is an HTTP status with ssehub's JSON body (``ssehub/answers.py``) sent before a stream starts.
"""

from __future__ import annotations

import json
import re
from json.encoder import encode_basestring
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response

from ssehub._types import Receive, Scope, Send
from ssehub.answers import HUB_ERRORS, error_for, error_response
from ssehub.auth import TOKEN_PARAM
from ssehub.cors import CorsPolicy
from ssehub.events import Event
from ssehub.exceptions import (
    InvalidValueError,
    LimitExceededError,
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
from ssehub.subscription import Subscription
from ssehub.writer import Writer

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
        except HUB_ERRORS as exc:
            return _refusal(hub, error_for(exc), cors)
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
        except HUB_ERRORS as exc:
            lease.release()
            return _refusal(hub, error_for(exc), cors)
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
        except HUB_ERRORS as exc:
            # Refused before the body was read: read and drop it (bounded) so the client reads this, not a reset.
            response = error_for(exc)
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
            return error_for(exc)
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
        except HUB_ERRORS as exc:
            return error_for(exc)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def route_path(scope: Scope) -> str:
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
