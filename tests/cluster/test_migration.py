"""A channel's slot migrates to another shard (resharding) while it is streamed: reset once, never silence."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import httpx
import pytest

from ssehub.brokers._cluster_layout import ClusterLayout
from ssehub.testing import open_stream
from tests.cluster.conftest import HubProcess, channels_per_shard
from tests.cluster.test_failover import Client
from tests.cluster_server import LocalCluster

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


async def test_a_migrated_channel_resets_clients_from_before_the_move_and_resumes_exactly_after(
    own_cluster: LocalCluster, start_hubs: Callable[..., list[HubProcess]]
) -> None:
    """When a channel's slot moves to another shard, its streams end and resume with one reset (their positions
    predate the move), publishing goes on through the new owner, and positions taken after the move resume
    exactly."""
    cluster = own_cluster
    (hub,) = start_hubs(cluster.url, 1, "mig")
    name = channels_per_shard("mig", 1)[0][0]
    slot = ClusterLayout("mig").slot(name)
    destination = next(port for port in cluster.master_ports() if port != cluster.master_of_slot(slot))

    async def publish(http: httpx.AsyncClient, i: int) -> None:
        deadline = time.monotonic() + 20
        while True:
            body = {"channel": name, "event": "n", "data": {"c": name, "i": i}}
            response = await http.post(hub.api + "/publish", json=body)
            if response.status_code == 201:
                return
            assert response.status_code == 503, response.text
            assert time.monotonic() < deadline, "publishing did not recover after the migration"
            await asyncio.sleep(0.2)

    async def wait_for(client: Client, count: int) -> None:
        deadline = time.monotonic() + 20
        while len(client.received) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async with httpx.AsyncClient(timeout=10.0) as http:
        live = Client(hub, [name])
        stop = asyncio.Event()
        reader = asyncio.create_task(live.run(http, stop))
        try:
            await asyncio.wait_for(live.connected.wait(), 20)
            for i in range(3):
                await publish(http, i)
            await wait_for(live, 3)
            await asyncio.to_thread(cluster.migrate_slot, slot, destination)
            deadline = time.monotonic() + 20
            while live.resets == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert live.resets == 1, "the stream of a moved channel did not end with a reset on resume"
            await publish(http, 3)
            await wait_for(live, 4)
            assert [i for _, i in live.received] == [0, 1, 2, 3]
            # A position taken after the move resumes exactly.
            async with open_stream(http, hub.api + f"/stream?channels={name}") as stream:
                assert (await stream.next_event()).event == "connected"
                await publish(http, 4)
                seen = await stream.next_event(10)
            for i in (5, 6):
                await publish(http, i)
            headers = {"Last-Event-ID": seen.id}
            async with open_stream(http, hub.api + f"/stream?channels={name}", headers=headers) as stream:
                assert json.loads((await stream.next_event()).data)["resumed"] is True
                replayed = [json.loads((await stream.next_event(10)).data)["i"] for _ in range(2)]
            assert replayed == [5, 6]
            await wait_for(live, 7)
            assert [i for _, i in live.received] == list(range(7))
            assert live.resets == 1
            assert "slot migrated" in hub.log.read_text()  # the hub saw Redis drop the shard subscription
        finally:
            stop.set()
            await asyncio.gather(reader, return_exceptions=True)
