"""A hub's Redis connections stay few whatever the number of browsers: one pub/sub plus the command pool."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest
import redis.asyncio

from ssehub import create_app
from ssehub.testing import open_stream, running_server
from tests.conftest import make_settings
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


async def test_many_streams_share_one_pubsub_and_a_bounded_pool(redis_server: RedisServer) -> None:
    """200 streams on 20 channels, publishing and resuming meanwhile: Redis sees at most pool_size + 1 hub clients."""
    admin = redis.asyncio.Redis(port=redis_server.port, socket_timeout=5)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=20)
    try:
        before = {client["id"] for client in await admin.client_list()}
        app = create_app(make_settings(broker_url=redis_server.url, redis_pool_size=4, max_connections=500))
        with running_server(app) as base:
            api = f"{base}/api/v1/events"
            async with httpx.AsyncClient(timeout=10, limits=limits) as client, contextlib.AsyncExitStack() as stack:
                streams = [
                    await stack.enter_async_context(open_stream(client, f"{api}/stream?channels=room:{n % 20}"))
                    for n in range(200)
                ]
                connected = [await stream.next_event() for stream in streams]
                publishes = [
                    client.post(f"{api}/publish", json={"channel": f"room:{n % 20}", "event": "e", "data": n})
                    for n in range(60)
                ]
                assert all(r.status_code == 201 for r in await asyncio.gather(*publishes))
                resumed = [  # 20 resumes at once: each reads history through the pool
                    await stack.enter_async_context(
                        open_stream(
                            client, f"{api}/stream?channels=room:{n}", headers={"Last-Event-ID": connected[n].id}
                        )
                    )
                    for n in range(20)
                ]
                for stream in resumed:
                    await stream.next_event()
                    assert len(await stream.take(3)) == 3
                hub_clients = [c for c in await admin.client_list() if c["id"] not in before]
                assert len(hub_clients) <= 4 + 1
                assert sum(1 for c in hub_clients if int(c.get("sub", 0)) + int(c.get("ssub", 0)) > 0) == 1
        after = {client["id"] for client in await admin.client_list()}
        assert after <= before  # every hub connection closed with the hub
    finally:
        await admin.aclose()
