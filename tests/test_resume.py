"""Resume after reconnect: exactly the missed events, in order, on one or several channels; reset past retention."""

from __future__ import annotations

import json

import httpx
import pytest

from ssehub.testing import open_stream
from tests.conftest import Server, ServerFactory
from tests.helpers import publish

pytestmark = pytest.mark.anyio


async def test_resume_one_channel_with_header(server: Server, client: httpx.AsyncClient) -> None:
    """A reconnect with Last-Event-ID receives exactly the events published while away, then live ones."""
    url = f"{server.api}/stream?channels=download:updates"
    async with open_stream(client, url) as stream:
        await stream.next_event()
        seen = [await publish(client, server, "download:updates", "download_progress", {"n": n}) for n in range(3)]
        assert [m.id for m in await stream.take(3)] == seen
    missed = [await publish(client, server, "download:updates", "download_progress", {"n": n}) for n in range(3, 8)]
    async with open_stream(client, url, headers={"Last-Event-ID": seen[-1]}) as stream:
        connected = await stream.next_event()
        assert connected.event == "connected"
        assert json.loads(connected.data)["resumed"] is True
        assert connected.id == seen[-1]
        replayed = await stream.take(5)
        assert [m.id for m in replayed] == missed
        assert [json.loads(m.data)["n"] for m in replayed] == [3, 4, 5, 6, 7]
        live = await publish(client, server, "download:updates", "download_progress", {"n": 8})
        assert (await stream.next_event()).id == live


async def test_resume_several_channels_with_query_parameter(server: Server, client: httpx.AsyncClient) -> None:
    """One id resumes a multi-channel stream exactly: missed events of every channel, merged in publish order."""
    url = f"{server.api}/stream?channels=a:1,b:2,c:3"
    async with open_stream(client, url) as stream:
        await stream.next_event()
        first = await publish(client, server, "a:1", "e", {"n": 0})
        assert (await stream.next_event()).id == first
    missed = []
    for n, channel in enumerate(["b:2", "a:1", "x:9", "c:3", "c:3", "b:2"], start=1):
        event_id = await publish(client, server, channel, "e", {"n": n, "channel": channel})
        if channel != "x:9":
            missed.append(event_id)
    async with open_stream(client, f"{url}&lastEventId={first}") as stream:
        await stream.next_event()
        replayed = await stream.take(5)
    assert [m.id for m in replayed] == missed
    assert [json.loads(m.data)["channel"] for m in replayed] == ["b:2", "a:1", "c:3", "c:3", "b:2"]


async def test_header_wins_over_query_parameter(server: Server, client: httpx.AsyncClient) -> None:
    """The browser's automatic Last-Event-ID header is newer than the id a page put in the URL."""
    old = await publish(client, server, "a:1", "e", 1)
    newer = await publish(client, server, "a:1", "e", 2)
    last = await publish(client, server, "a:1", "e", 3)
    url = f"{server.api}/stream?channels=a:1&lastEventId={old}"
    async with open_stream(client, url, headers={"Last-Event-ID": newer}) as stream:
        await stream.next_event()
        assert (await stream.next_event()).id == last


async def test_fresh_client_resumes_from_connected_id(server: Server, client: httpx.AsyncClient) -> None:
    """A client that saw no event resumes from the id of its connected event and misses nothing."""
    url = f"{server.api}/stream?channels=session:ab12"
    async with open_stream(client, url) as stream:
        connected = await stream.next_event()
    missed = await publish(client, server, "session:ab12", "state", {"locked": True})
    async with open_stream(client, url, headers={"Last-Event-ID": connected.id}) as stream:
        await stream.next_event()
        assert (await stream.next_event()).id == missed


async def test_resume_respects_filters(server: Server, client: httpx.AsyncClient) -> None:
    """Replayed events pass the stream's filters like live ones."""
    start = await publish(client, server, "download:updates", "download_progress", {"download_id": 0})
    wanted = []
    for n in range(6):
        event_id = await publish(client, server, "download:updates", "download_progress", {"download_id": n % 2})
        if n % 2:
            wanted.append(event_id)
    async with open_stream(client, f"{server.api}/downloads/1?lastEventId={start}") as stream:
        await stream.next_event()
        assert [m.id for m in await stream.take(3)] == wanted


async def test_no_duplicates_when_resuming_at_the_head(server: Server, client: httpx.AsyncClient) -> None:
    """Resuming from the newest id replays nothing and then delivers live events once."""
    head = await publish(client, server, "a:1", "e", 0)
    async with open_stream(client, f"{server.api}/stream?channels=a:1", headers={"Last-Event-ID": head}) as stream:
        await stream.next_event()
        live = [await publish(client, server, "a:1", "e", n) for n in (1, 2)]
        assert [m.id for m in await stream.take(2)] == live


async def test_reset_when_history_expired(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """An id older than the retained history yields a reset event naming the channels, then live events."""
    server = start_server(history_size=3)
    old = await publish(client, server, "a:1", "e", 0)
    for n in range(1, 6):
        await publish(client, server, "a:1", "e", n)
    async with open_stream(client, f"{server.api}/stream?channels=a:1,b:2", headers={"Last-Event-ID": old}) as stream:
        connected = await stream.next_event()
        assert json.loads(connected.data)["resumed"] is False
        reset = await stream.next_event()
        assert reset.event == "reset"
        assert json.loads(reset.data) == {"reason": "history_expired", "channels": ["a:1"]}
        live = await publish(client, server, "b:2", "e", "after")
        message = await stream.next_event()
        assert (message.id, message.data) == (live, '"after"')
    # The reset's id is the head: resuming from it is exact again.
    async with open_stream(client, f"{server.api}/stream?channels=a:1,b:2", headers={"Last-Event-ID": reset.id}) as s:
        await s.next_event()
        assert (await s.next_event()).id == live


async def test_reset_when_history_aged_out(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """Events older than history_ttl are gone: resuming before them yields a reset."""
    import asyncio

    server = start_server(history_ttl=0.2)
    old = await publish(client, server, "a:1", "e", 0)
    await publish(client, server, "a:1", "e", 1)
    await asyncio.sleep(0.4)
    async with open_stream(client, f"{server.api}/stream?channels=a:1", headers={"Last-Event-ID": old}) as stream:
        await stream.next_event()
        assert (await stream.next_event()).event == "reset"


@pytest.mark.parametrize("bad_id", ["garbage", "1-2-3", "-1-0", "12345678901234567890-0", "1.5-0", "01-0"])
async def test_malformed_last_event_id_falls_back_to_reset(
    server: Server, client: httpx.AsyncClient, bad_id: str
) -> None:
    """A Last-Event-ID ssehub never issued gives the documented fallback: 200, then a reset event."""
    async with open_stream(client, f"{server.api}/stream?channels=a:1", headers={"Last-Event-ID": bad_id}) as stream:
        assert stream.response.status_code == 200
        await stream.next_event()
        reset = await stream.next_event()
    assert reset.event == "reset"
    assert json.loads(reset.data) == {"reason": "invalid_last_event_id", "channels": ["a:1"]}


async def test_id_from_the_future_resets(server: Server, client: httpx.AsyncClient) -> None:
    """An id beyond anything this hub issued (another server's, or before a restart) resets."""
    future = "99999999999999-0"
    async with open_stream(client, f"{server.api}/stream?channels=a:1&lastEventId={future}") as stream:
        await stream.next_event()
        assert json.loads((await stream.next_event()).data)["reason"] == "history_expired"


async def test_restarted_hub_resets_old_ids(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """After a restart the memory broker's history is gone: an id from before it yields a reset."""
    first = start_server()
    old = await publish(client, first, "a:1", "e", 0)
    await publish(client, first, "a:1", "e", 1)
    second = start_server()
    async with open_stream(client, f"{second.api}/stream?channels=a:1", headers={"Last-Event-ID": old}) as stream:
        await stream.next_event()
        assert (await stream.next_event()).event == "reset"


async def test_replay_larger_than_the_buffer_bound(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """A backlog many times the per-connection buffer bound is replayed in full in one stream, no loop."""
    server = start_server(max_buffer_bytes=64 * 1024, history_size=100)
    start = await publish(client, server, "big:1", "e", "start")
    blob = "x" * 20000
    missed = [await publish(client, server, "big:1", "e", {"n": n, "blob": blob}) for n in range(40)]  # ~800 KB
    async with open_stream(client, f"{server.api}/stream?channels=big:1&lastEventId={start}", timeout=10) as stream:
        connected = await stream.next_event()
        assert json.loads(connected.data)["resumed"] is True
        live = await publish(client, server, "big:1", "e", "live")
        received = await stream.take(41, timeout=10)
    assert [m.id for m in received] == [*missed, live]
    assert [json.loads(m.data)["n"] for m in received[:-1]] == list(range(40))
