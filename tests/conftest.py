"""Shared fixtures: a real uvicorn server running ssehub on a free port, with settings chosen per test."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from ssehub import Hub, Settings, create_api, create_app
from ssehub.guard import uvicorn_options
from ssehub.testing import running_server


@dataclass
class Server:
    """A running hub: its base URL, API URL and the hub object (which lives in the server's thread)."""

    base_url: str
    api: str
    hub: Hub


ServerFactory = Callable[..., Server]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_settings(**overrides: Any) -> Settings:
    """Test settings: no .env file, short intervals unless a test says otherwise."""
    values: dict[str, Any] = {"heartbeat_interval": 30.0, "connection_timeout": 300.0, "broker_url": "memory://"}
    # Per-client limits off: tests open hundreds of streams and publish thousands of events from one address.
    # tests/test_client_limits.py (and any test about them) turns them on explicitly.
    values.update(max_streams_per_client=0, max_streams_per_identity=0, publish_rate=0)
    values.update(overrides)
    return Settings(_env_file=None, **values)


def mounted_app(hub: Hub) -> Starlette:
    """The API mounted in a Starlette app whose lifespan runs the hub (as an application embeds ssehub).

    Starlette's middleware wraps ``send``, so streams here use the portable writer.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with hub:
            yield

    return Starlette(routes=[Mount(hub.settings.prefix, app=create_api(hub))], lifespan=lifespan)


@pytest.fixture(params=["native", "direct", "portable"])
def writer(request: pytest.FixtureRequest) -> str:
    """Which way the servers of a test write streams: every stream scenario runs with each."""
    mode: str = request.param
    return mode


@pytest.fixture
def start_server(writer: str) -> Iterator[ServerFactory]:
    """Start ssehub servers with given settings; all stop at the end of the test.

    ``native``: the standalone app with ``ssehub serve``'s options: streams served by ssehub on uvicorn's
    connection, without uvicorn's request cycle; ``direct``: the same without that, streams through uvicorn's
    request cycle, written straight to its transport; ``portable``: the API mounted in a Starlette app, whose
    streams go through ASGI ``send``.
    """
    with contextlib.ExitStack() as stack:

        def start(**overrides: Any) -> Server:
            settings = make_settings(**overrides)
            hub = Hub(settings)
            app = mounted_app(hub) if writer == "portable" else create_app(hub=hub)
            # The server options `ssehub serve` uses (head guard, proxy trust), so tests see what users run.
            options = uvicorn_options(settings, native=writer == "native")
            base_url = stack.enter_context(running_server(app, **options))
            return Server(base_url, base_url + settings.prefix, hub)

        yield start


@pytest.fixture
def server(start_server: ServerFactory) -> Server:
    """A server with default settings."""
    return start_server()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client without connection limits (many concurrent streams)."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=20)
    async with httpx.AsyncClient(timeout=5.0, limits=limits) as http:
        yield http
