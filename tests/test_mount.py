"""ssehub mounted in a FastAPI application whose lifespan runs the hub, served by a real uvicorn."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from ssehub import Hub, create_api
from ssehub.testing import open_stream, running_server
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


async def test_fastapi_route_publishes_to_mounted_stream(client: httpx.AsyncClient) -> None:
    """A FastAPI route publishes with hub.publish; a stream of the mounted API receives it."""
    hub = Hub(make_settings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with hub:
            yield

    app = FastAPI(lifespan=lifespan)
    app.mount("/events", create_api(hub))

    @app.post("/downloads/{download_id}/progress")
    async def progress(download_id: int, value: int) -> dict[str, str]:
        event = await hub.publish(
            "download:updates", "download_progress", {"download_id": download_id, "progress": value}
        )
        return {"id": str(event.id)}

    with running_server(app) as base:
        async with open_stream(client, f"{base}/events/downloads/7") as stream:
            assert (await stream.next_event()).event == "connected"
            await client.post(f"{base}/downloads/8/progress", params={"value": 1})
            response = await client.post(f"{base}/downloads/7/progress", params={"value": 55})
            message = await stream.next_event()
        assert message.id == response.json()["id"]
        assert json.loads(message.data) == {"download_id": 7, "progress": 55}
        assert (await client.get(f"{base}/events/health")).json()["status"] == "ok"
    assert not hub.running


async def test_stream_before_hub_started_is_503(client: httpx.AsyncClient) -> None:
    """A mounted API whose hub was never started answers 503 HUB_NOT_RUNNING, not a broken stream."""
    app = FastAPI()
    app.mount("/events", create_api(Hub(make_settings())))
    with running_server(app) as base:
        response = await client.get(f"{base}/events/stream")
    assert (response.status_code, response.json()["code"]) == (503, "HUB_NOT_RUNNING")
