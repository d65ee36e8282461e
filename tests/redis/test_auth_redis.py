"""The two-user end-to-end scenario on the Redis broker: grants hold across live delivery and Redis replay."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.redis_server import RedisServer
from tests.test_auth_e2e import AUTH_SETTINGS, two_users

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


async def test_two_users_redis(
    start_server: ServerFactory, client: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    """On Redis, each of two users receives only what is theirs, live and replayed."""
    await two_users(start_server(broker_url=redis_server.url, **AUTH_SETTINGS), client)
