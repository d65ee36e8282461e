"""The stream endpoints against a real uvicorn server: first bytes, delivery, fan-out, filters and heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import pytest

from ssehub.testing import open_stream
from tests.conftest import Server, ServerFactory
from tests.helpers import publish

pytestmark = pytest.mark.anyio


async def test_first_bytes_headers_and_connected_event(server: Server, client: httpx.AsyncClient) -> None:
    """A stream answers 200 with SSE headers and sends retry plus a connected event before any publish."""
    async with open_stream(client, f"{server.api}/stream") as stream:
        response = stream.response
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in response.headers
        connected = await stream.next(timeout=2)
        assert connected.event == "connected"
        assert connected.retry == 3000
        info = json.loads(connected.data)
        assert info["channels"] == ["download:updates", "queue:updates", "system:notifications"]
        assert len(info["connection_id"]) == 16
        assert info["resumed"] is False
        assert connected.id  # the position to resume from even if no event ever arrives


async def test_published_data_arrives_as_compact_json(server: Server, client: httpx.AsyncClient) -> None:
    """What was published arrives with its id, event type and data as compact JSON."""
    data = {"download_id": 42, "progress": 0.5, "name": "a\nb ü", "nested": [1, {"x": None}]}
    async with open_stream(client, f"{server.api}/stream?channels=download:updates") as stream:
        await stream.next_event()
        event_id = await publish(client, server, "download:updates", "download_progress", data)
        message = await stream.next_event()
    assert message.id == event_id
    assert message.event == "download_progress"
    assert message.data == json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    assert json.loads(message.data) == data


async def test_raw_frame_bytes(server: Server, client: httpx.AsyncClient) -> None:
    """The frame on the wire is exactly id, event and one data line, ended by a blank line."""
    async with client.stream("GET", f"{server.api}/stream?channels=queue:updates") as response:
        chunks = response.aiter_raw()
        first = await asyncio.wait_for(anext(chunks), 2)
        assert first.startswith(b"retry: 3000\nid: ")
        event_id = await publish(client, server, "queue:updates", "queue_update", {"size": 3})
        frame = await asyncio.wait_for(anext(chunks), 2)
    assert frame == f'id: {event_id}\nevent: queue_update\ndata: {{"size":3}}\n\n'.encode()


async def test_fan_out_to_many_subscribers(server: Server, client: httpx.AsyncClient) -> None:
    """Every subscriber of a channel receives every event once, in order; others receive nothing."""
    async with contextlib.AsyncExitStack() as stack:
        subscribers = [
            await stack.enter_async_context(open_stream(client, f"{server.api}/stream?channels=job:1"))
            for _ in range(40)
        ]
        bystander = await stack.enter_async_context(open_stream(client, f"{server.api}/stream?channels=job:2"))
        for stream in [*subscribers, bystander]:
            assert (await stream.next_event()).event == "connected"
        ids = [await publish(client, server, "job:1", "tick", {"n": n}) for n in range(25)]
        for stream in subscribers:
            received = await stream.take(25)
            assert [m.id for m in received] == ids
            assert [json.loads(m.data)["n"] for m in received] == list(range(25))
        await publish(client, server, "job:2", "tick", {"n": "other"})
        assert json.loads((await bystander.next_event()).data) == {"n": "other"}


async def test_filters_on_data_fields(server: Server, client: httpx.AsyncClient) -> None:
    """download_id filters match the top-level field, as a string or a number, on /stream and /downloads."""
    async with contextlib.AsyncExitStack() as stack:
        by_query = await stack.enter_async_context(
            open_stream(client, f"{server.api}/stream?channels=download:updates&download_id=42")
        )
        by_path = await stack.enter_async_context(open_stream(client, f"{server.api}/downloads/42"))
        two_filters = await stack.enter_async_context(
            open_stream(client, f"{server.api}/stream?channels=download:updates&download_id=42&state=done")
        )
        everything = await stack.enter_async_context(open_stream(client, f"{server.api}/stream"))
        for stream in (by_query, by_path, two_filters, everything):
            await stream.next_event()
        await publish(client, server, "download:updates", "download_progress", {"download_id": 7, "progress": 1})
        await publish(client, server, "download:updates", "download_progress", {"download_id": 42, "progress": 2})
        await publish(client, server, "download:updates", "download_progress", {"download_id": "42", "state": "done"})
        await publish(client, server, "download:updates", "download_progress", [42])
        for stream in (by_query, by_path):
            got = [json.loads(m.data) for m in await stream.take(2)]
            assert got == [{"download_id": 42, "progress": 2}, {"download_id": "42", "state": "done"}]
        assert json.loads((await two_filters.next_event()).data) == {"download_id": "42", "state": "done"}
        assert len(await everything.take(4)) == 4
        # Nothing else is queued for the filtered streams: the next thing they get is the next match.
        await publish(client, server, "download:updates", "download_progress", {"download_id": 42, "progress": 3})
        assert json.loads((await by_path.next_event()).data)["progress"] == 3


async def test_queue_endpoint(server: Server, client: httpx.AsyncClient) -> None:
    """/queue streams the queue:updates channel only."""
    async with open_stream(client, f"{server.api}/queue") as stream:
        assert json.loads((await stream.next_event()).data)["channels"] == ["queue:updates"]
        await publish(client, server, "download:updates", "download_progress", {"download_id": 1})
        event_id = await publish(client, server, "queue:updates", "queue_update", {"queued": 2})
        message = await stream.next_event()
    assert (message.id, message.event) == (event_id, "queue_update")


async def test_heartbeats(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """Idle streams receive heartbeat events at the configured interval, without ids."""
    server = start_server(heartbeat_interval=0.2)
    async with open_stream(client, f"{server.api}/stream") as stream:
        connected = await stream.next()
        beats = [await stream.next(timeout=1.0) for _ in range(3)]
    assert all(b.event == "heartbeat" for b in beats)
    assert all(b.id == connected.id for b in beats)  # no id field: the last id carries over
    assert all("time" in json.loads(b.data) for b in beats)


async def test_other_sse_library_parses_the_stream(server: Server, client: httpx.AsyncClient) -> None:
    """httpx-sse, an independent client library, reads ids, types and data as published."""
    from httpx_sse import aconnect_sse

    async with aconnect_sse(client, "GET", f"{server.api}/stream?channels=system:notifications") as source:
        events = source.aiter_sse()
        first = await asyncio.wait_for(anext(events), 2)
        assert first.event == "connected"
        assert first.retry == 3000
        event_id = await publish(client, server, "system:notifications", "system_notification", {"message": "hi"})
        second = await asyncio.wait_for(anext(events), 2)
    assert (second.id, second.event, second.json()) == (event_id, "system_notification", {"message": "hi"})


async def test_writer_is_the_expected_one(server: Server, client: httpx.AsyncClient, writer: str) -> None:
    """Standalone streams write straight to uvicorn's transport (served by ssehub itself under ``ssehub serve``'s
    options); mounted ones use the portable ASGI writer."""
    async with open_stream(client, f"{server.api}/stream") as stream:
        await stream.next_event()
        [connection] = list(server.hub._connections)
        assert connection.direct is (writer != "portable")
        assert connection.writer == writer
