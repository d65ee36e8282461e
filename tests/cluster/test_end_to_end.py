"""End to end on a real 3-master Redis Cluster: hub processes, browsers' streams over HTTP, resume across hubs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable

import httpx
import pytest
import redis.asyncio

from ssehub import create_app
from ssehub.testing import EventStream, SSEMessage, open_stream, running_server
from tests.cluster.conftest import HubProcess, channels_per_shard
from tests.cluster_server import LocalCluster
from tests.conftest import make_settings

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


async def collect(stream: EventStream, count: int, within: float = 20.0) -> list[SSEMessage]:
    """The next ``count`` events of type ``n`` (opening frames and heartbeats skipped)."""
    deadline = time.monotonic() + within
    events: list[SSEMessage] = []
    while len(events) < count:
        message = await stream.next_event(max(0.01, deadline - time.monotonic()))
        assert message.event in ("n", "heartbeat"), message
        if message.event == "n":
            events.append(message)
    return events


async def publish(client: httpx.AsyncClient, hub: HubProcess, channel: str, data: object) -> str:
    """Publish one ``n`` event through a hub's API; return its id."""
    response = await client.post(hub.api + "/publish", json={"channel": channel, "event": "n", "data": data})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def by_channel(events: list[SSEMessage]) -> dict[str, list[int]]:
    """The ``i`` of each received event, per channel, in arrival order."""
    out: dict[str, list[int]] = {}
    for event in events:
        data = json.loads(event.data)
        out.setdefault(data["c"], []).append(data["i"])
    return out


async def test_publishes_on_three_shards_reach_every_subscriber_in_channel_order(
    redis_cluster: LocalCluster, prefix: str, start_hubs: Callable[..., list[HubProcess]]
) -> None:
    """Events published through two hubs on channels of all three shards reach every stream on both hubs,
    once each, in publish order per channel."""
    hubs = start_hubs(redis_cluster.url, 2, prefix)
    names = [group[0] for group in channels_per_shard(prefix, 1)]
    per_channel = 10
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            httpx.AsyncClient(timeout=10.0, limits=httpx.Limits(max_connections=None))
        )
        streams = [
            await stack.enter_async_context(open_stream(client, hub.api + "/stream?channels=" + ",".join(names)))
            for hub in (*hubs, *hubs)
        ]
        for stream in streams:
            assert (await stream.next_event()).event == "connected"
        for i in range(per_channel):
            for n, name in enumerate(names):
                await publish(client, hubs[(i + n) % 2], name, {"c": name, "i": i})
        received = await asyncio.gather(*(collect(stream, per_channel * len(names)) for stream in streams))
    for events in received:
        assert by_channel(events) == {name: list(range(per_channel)) for name in names}
        assert len({event.id for event in events}) == len(events)


async def test_resume_on_another_hub_process_delivers_exactly_the_missed_events(
    redis_cluster: LocalCluster, prefix: str, start_hubs: Callable[..., list[HubProcess]]
) -> None:
    """A stream on channels of three shards drops; events are published on all of them; resuming with its
    Last-Event-ID on a different hub process delivers exactly the missed events, then live ones, none twice."""
    first, second = start_hubs(redis_cluster.url, 2, prefix)
    names = [group[0] for group in channels_per_shard(prefix, 1)]
    query = "/stream?channels=" + ",".join(names)
    async with httpx.AsyncClient(timeout=10.0, limits=httpx.Limits(max_connections=None)) as client:
        async with open_stream(client, first.api + query) as stream:
            assert (await stream.next_event()).event == "connected"
            for i in range(3):
                for name in names:
                    await publish(client, second, name, {"c": name, "i": i})
            before = await collect(stream, 9)
        for i in range(3, 8):
            for name in names:
                await publish(client, first, name, {"c": name, "i": i})
        last_id = before[-1].id
        assert last_id.startswith("c1.")
        async with open_stream(client, second.api + query, headers={"Last-Event-ID": last_id}) as stream:
            connected = await stream.next_event()
            assert connected.event == "connected"
            assert json.loads(connected.data)["resumed"] is True
            missed = await collect(stream, 15)
            for name in names:
                await publish(client, first, name, {"c": name, "i": 8})
            live = await collect(stream, 3)
            with pytest.raises(TimeoutError):
                await stream.next_event(0.5)
        # Resuming again from the middle of the replay, on the first hub, is exact as well.
        middle = missed[6]
        async with open_stream(client, first.api + query, headers={"Last-Event-ID": middle.id}) as stream:
            assert json.loads((await stream.next_event()).data)["resumed"] is True
            again = await collect(stream, 15 - 7 + 3)
    assert by_channel(before) == {name: [0, 1, 2] for name in names}
    assert by_channel(missed) == {name: [3, 4, 5, 6, 7] for name in names}
    assert by_channel(live) == {name: [8] for name in names}
    assert [e.data for e in again] == [e.data for e in missed[7:] + live]


async def test_a_single_redis_id_on_a_cluster_hub_gets_a_reset(
    redis_cluster: LocalCluster, prefix: str, start_hubs: Callable[..., list[HubProcess]]
) -> None:
    """A Last-Event-ID that is not a cluster position is answered with connected and reset, never silence."""
    (hub,) = start_hubs(redis_cluster.url, 1, prefix)
    async with (
        httpx.AsyncClient(timeout=10.0) as client,
        open_stream(client, hub.api + "/stream?channels=a,b", headers={"Last-Event-ID": "1764040000123-0"}) as stream,
    ):
        assert (await stream.next_event()).event == "connected"
        reset = await stream.next_event()
        assert reset.event == "reset"
        assert reset.id.startswith("c1.")


async def test_hub_connections_to_the_cluster_stay_per_shard_whatever_the_streams(
    redis_cluster: LocalCluster, prefix: str
) -> None:
    """150 streams on 30 channels over three shards, publishing and 15 resumes: each master sees one sharded
    pub/sub connection and at most the command pool (plus one discovery connection) from the hub."""
    ports = redis_cluster.master_ports()
    admins = [redis.asyncio.Redis(port=port, socket_timeout=5) for port in ports]
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=20)
    names = [name for group in channels_per_shard(prefix, 10) for name in group]
    try:
        before = [{c["id"] for c in await admin.client_list()} for admin in admins]
        settings = make_settings(
            broker_url=redis_cluster.url, redis_prefix=prefix, redis_pool_size=4, max_connections=500
        )
        with running_server(create_app(settings)) as base:
            api = f"{base}/api/v1/events"
            async with httpx.AsyncClient(timeout=10, limits=limits) as client, contextlib.AsyncExitStack() as stack:
                streams = [
                    await stack.enter_async_context(open_stream(client, f"{api}/stream?channels={names[n % 30]}"))
                    for n in range(150)
                ]
                connected = [await stream.next_event() for stream in streams]
                publishes = [
                    client.post(f"{api}/publish", json={"channel": names[n % 30], "event": "e", "data": n})
                    for n in range(60)
                ]
                assert all(r.status_code == 201 for r in await asyncio.gather(*publishes))
                resumed = [
                    await stack.enter_async_context(
                        open_stream(
                            client, f"{api}/stream?channels={names[n]}", headers={"Last-Event-ID": connected[n].id}
                        )
                    )
                    for n in range(15)
                ]
                for stream in resumed:
                    assert (await stream.next_event()).event == "connected"
                    assert len(await stream.take(2)) == 2
                for admin, known in zip(admins, before, strict=True):
                    hub_clients = [c for c in await admin.client_list() if c["id"] not in known]
                    assert len(hub_clients) <= 4 + 2, hub_clients
                    assert sum(1 for c in hub_clients if int(c.get("ssub", 0)) > 0) == 1
        for admin, known in zip(admins, before, strict=True):
            assert {c["id"] for c in await admin.client_list()} <= known  # every hub connection closed
    finally:
        for admin in admins:
            await admin.aclose()
