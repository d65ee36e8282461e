"""Small HTTP helpers shared by the API tests."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.conftest import Server


async def publish(client: httpx.AsyncClient, server: Server, channel: str, event: str, data: object) -> str:
    """Publish through the HTTP API; assert 201 and return the id."""
    response = await client.post(f"{server.api}/publish", json={"channel": channel, "event": event, "data": data})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["channel"] == channel
    return str(body["id"])


async def health(client: httpx.AsyncClient, server: Server) -> dict[str, Any]:
    """GET /health as a dict."""
    response = await client.get(f"{server.api}/health")
    result: dict[str, Any] = response.json()
    return result


async def wait_for_connections(client: httpx.AsyncClient, server: Server, count: int, timeout: float = 5.0) -> None:
    """Poll /health until it shows ``count`` active connections (bounded)."""
    async with asyncio.timeout(timeout):
        while (await health(client, server))["active_connections"] != count:
            await asyncio.sleep(0.02)
