"""Fixtures of the Redis-only tests: a fresh redis-server per test (they kill and restart it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_server import REDIS_SERVER, SKIP_REASON, RedisServer


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server with an append-only file, so its data survives a kill and restart."""
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    server = RedisServer(appendonly=True)
    try:
        server.start()
        yield server
    finally:
        server.close()
