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
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Mount, Route

from ssehub._types import Receive, Scope, Send
from ssehub.answers import HUB_ERRORS, error_for, error_response
from ssehub.client_assets import client_routes
from ssehub.cors import CorsPolicy
from ssehub.demo import Demo
from ssehub.echo import echo
from ssehub.endpoints import PublishEndpoint, StreamEndpoint, StreamTable, route_path
from ssehub.hub import Hub
from ssehub.limits import (
    RateLimiter,
    StreamLimits,
)
from ssehub.metrics import create_metrics
from ssehub.settings import Settings

logger = logging.getLogger("ssehub.app")


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
    except HUB_ERRORS as exc:
        return error_for(exc)
    health = hub.auth.health_view(hub.health(), grant)  # per-channel and broker details for admins only
    return JSONResponse(health, status_code=200 if health["status"] == "ok" else 503)


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
                found = self._streams.find(route_path(scope))
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
