"""A broker whose live delivery lags behind its history reads (as Redis's pub/sub may behind its commands).

A resuming stream reads history, writes it, and goes live. If the broker then hands over, late, an event the
read already returned, the stream must not write it a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import httpx
import pytest

from ssehub import create_app
from ssehub.brokers.base import DeliverCallback, GapCallback
from ssehub.brokers.memory import MemoryBroker
from ssehub.events import Event
from ssehub.guard import uvicorn_options
from ssehub.hub import Hub
from ssehub.testing import open_stream, running_server
from tests.conftest import Server, make_settings, mounted_app

pytestmark = pytest.mark.anyio

#: How long live delivery lags behind publishing (and so behind every history read).
LAG = 0.8


class LaggingBroker(MemoryBroker):
    """The memory broker, with every live event handed to the hub LAG seconds after it was stored."""

    async def start(self, deliver: DeliverCallback, on_gap: GapCallback | None = None) -> None:
        loop = asyncio.get_running_loop()

        def late(event: Event) -> None:
            loop.call_later(LAG, deliver, event)

        await super().start(late, on_gap)


@pytest.fixture
def lagging_server(writer: str) -> Iterator[Server]:
    """A server whose hub runs on a LaggingBroker (both writers)."""
    settings = make_settings()
    hub = Hub(settings, broker=LaggingBroker())
    app = mounted_app(hub) if writer == "portable" else create_app(hub=hub)
    with contextlib.ExitStack() as stack:
        base_url = stack.enter_context(running_server(app, **uvicorn_options(settings, native=writer == "native")))
        yield Server(base_url, base_url + settings.prefix, hub)


async def test_an_event_read_from_history_is_not_written_again_when_it_arrives_live(
    lagging_server: Server, client: httpx.AsyncClient
) -> None:
    """A resumed stream gets an event from history once, though the broker delivers it live after the read."""
    url = f"{lagging_server.api}/stream?channels=room"

    async def publish(n: int) -> str:
        response = await client.post(f"{lagging_server.api}/publish", json={"channel": "room", "event": "n", "data": n})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async with open_stream(client, url) as first:
        start = (await first.next_event()).id  # the channel is now subscribed on the broker
        missed = await publish(1)
        # Resume before the event is delivered live: history has it, the live copy comes after the replay.
        async with open_stream(client, url, headers={"Last-Event-ID": start}) as resumed:
            assert (await resumed.next_event()).event == "connected"
            assert (await resumed.next_event()).id == missed
            await asyncio.sleep(LAG + 0.3)  # the late live copy of `missed` has been handed over by now
            after = await publish(2)
            assert (await resumed.next_event(timeout=LAG + 5)).id == after
