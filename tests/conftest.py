"""Shared fixtures: a real uvicorn server running ssehub on a free port, with settings chosen per test."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from ssehub import Hub, Settings, create_app
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
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def start_server() -> Iterator[ServerFactory]:
    """Start ssehub servers with given settings; all stop at the end of the test."""
    with contextlib.ExitStack() as stack:

        def start(**overrides: Any) -> Server:
            settings = make_settings(**overrides)
            app = create_app(settings)
            base_url = stack.enter_context(running_server(app))
            return Server(base_url, base_url + settings.prefix, app.state.hub)

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
