"""A master of a real 3+3 Redis Cluster is killed mid-stream: its replica takes over, nothing is missed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster

from ssehub.brokers._cluster_layout import ClusterLayout
from ssehub.testing import open_stream
from tests.cluster.conftest import THREE_SHARDS, HubProcess, channels_per_shard, require_cluster_tools
from tests.cluster_server import LocalCluster

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
def cluster_with_replicas() -> Iterator[LocalCluster]:
    """3 masters with one replica each and a short node timeout, so a replica takes over within seconds."""
    require_cluster_tools()
    cluster = LocalCluster(masters=3, replicas=1, node_timeout_ms=1500)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


class Client:
    """A browser-like client: reads its stream, reconnects with its Last-Event-ID when the stream ends."""

    def __init__(self, hub: HubProcess, channels: list[str]) -> None:
        self.url = hub.api + "/stream?channels=" + ",".join(channels)
        self.received: list[tuple[str, int]] = []
        self.resets = 0
        self.last_id: str | None = None
        self.connected = asyncio.Event()

    async def run(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            headers = {"Last-Event-ID": self.last_id} if self.last_id else None
            try:
                async with open_stream(client, self.url, headers=headers, timeout=30) as stream:
                    while not stop.is_set():
                        try:
                            message = await stream.next_event(0.5)
                        except TimeoutError:
                            continue
                        self.last_id = message.id or self.last_id
                        if message.event == "connected":
                            self.connected.set()
                        elif message.event == "reset":
                            self.resets += 1
                        elif message.event == "n":
                            data = json.loads(message.data)
                            self.received.append((data["c"], data["i"]))
            except (EOFError, httpx.HTTPError):
                await asyncio.sleep(0.2)


async def test_a_killed_master_is_replaced_and_streams_miss_nothing(
    cluster_with_replicas: LocalCluster, start_hubs: Callable[..., list[HubProcess]]
) -> None:
    """Kill the master of one shard (by PID) while events flow on three shards: its replica takes over; streams
    on the other shards still open meanwhile; every acknowledged event reaches every stream once, in order per
    channel, and a stream sees a reset only if acknowledged events were really lost (not replicated)."""
    cluster = cluster_with_replicas
    subscriber_hub, publisher_hub = start_hubs(cluster.url, 2, "fo")
    names = [group[0] for group in channels_per_shard("fo", 1)]
    victim_port = cluster.master_of_slot(THREE_SHARDS[1][0])
    attempts: dict[str, list[int]] = {name: [] for name in names}
    acked: dict[str, list[int]] = {name: [] for name in names}
    stop = asyncio.Event()
    clients = [Client(subscriber_hub, names), Client(subscriber_hub, names), Client(publisher_hub, names)]
    async with httpx.AsyncClient(timeout=10.0, limits=httpx.Limits(max_connections=None)) as http:
        readers = [asyncio.create_task(c.run(http, stop)) for c in clients]
        try:
            for c in clients:
                await asyncio.wait_for(c.connected.wait(), 20)
            counter = 0
            killed_at: float | None = None
            recovered = 0
            deadline = time.monotonic() + 60
            while recovered < 15 and time.monotonic() < deadline:
                for name in names:
                    counter += 1
                    attempts[name].append(counter)
                    body = {"channel": name, "event": "n", "data": {"c": name, "i": counter}}
                    try:
                        response = await http.post(publisher_hub.api + "/publish", json=body)
                    except httpx.HTTPError:
                        continue
                    if response.status_code == 201:
                        acked[name].append(counter)
                        if killed_at is not None and name == names[1]:
                            recovered += 1
                    else:
                        assert response.status_code == 503, response.text
                if killed_at is None and counter >= 30:
                    cluster.node(victim_port).kill()
                    killed_at = time.monotonic()
                    # While that shard fails over, a new stream on a channel of another shard still opens.
                    url = subscriber_hub.api + f"/stream?channels={names[0]}"
                    async with open_stream(http, url, timeout=20) as other:
                        assert other.response.status_code == 200
                        assert (await other.next_event(15)).event == "connected"
                await asyncio.sleep(0.05 if killed_at is None or recovered else 0.2)
            assert recovered >= 15, "publishing on the failed shard did not recover within 60 s"
            new_master = cluster.master_of_slot(THREE_SHARDS[1][0])
            assert new_master not in (0, victim_port)
            # What the cluster still holds: acknowledged events missing here were lost with the old master.
            admin = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", new_master)], decode_responses=True)
            try:
                held: dict[str, set[int]] = {}
                for name in names:
                    entries = await admin.xrange(ClusterLayout("fo").stream(name)) or []
                    held[name] = {json.loads(str(fields["data"]))["i"] for _, fields in entries if fields}
            finally:
                await admin.aclose()
            lost = {name: [i for i in acked[name] if i not in held[name]] for name in names}
            expected = {(name, i) for name in names for i in acked[name] if i in held[name]}
            finish = time.monotonic() + 30
            while time.monotonic() < finish and not all(expected <= set(c.received) for c in clients):
                await asyncio.sleep(0.1)
            # The subscriber hub followed the failover: its connection to that shard is on the new master.
            shards = (await http.get(subscriber_hub.api + "/health")).json()["broker"]["shards"]
            health = shards[str(THREE_SHARDS[1][0])]
            assert health["master"] == f"127.0.0.1:{new_master}"
            assert health["reconnects"] >= 1
        finally:
            stop.set()
            await asyncio.gather(*readers, return_exceptions=True)
    for c in clients:
        assert len(c.received) == len(set(c.received)), "an event was delivered twice"
        for name in names:
            got = [i for channel, i in c.received if channel == name]
            assert got == sorted(got)
            assert set(got) <= set(attempts[name])
        assert expected <= set(c.received), "an acknowledged, retained event was missed"
        if not any(lost.values()):
            assert c.resets == 0, "a reset although no history was lost"


async def test_events_lost_in_a_failover_reset_only_the_clients_that_missed_them(
    cluster_with_replicas: LocalCluster, start_hubs: Callable[..., list[HubProcess]]
) -> None:
    """Events a master acknowledged but never replicated are gone after failover: a client that had not seen
    them resumes with a reset instead of silence; a client that saw them all resumes without one; later events
    on that shard reach both (no id is issued twice)."""
    cluster = cluster_with_replicas
    (hub,) = start_hubs(cluster.url, 1, "lost")
    name = channels_per_shard("lost", 1)[1][0]
    victim_port = cluster.master_of_slot(THREE_SHARDS[1][0])
    replica = next(
        node
        for node in cluster.nodes
        if node.alive and f"master_port:{victim_port}" in node.info("INFO", "replication")
    )
    assert replica.process is not None

    async def publish(http: httpx.AsyncClient, i: int) -> bool:
        body = {"channel": name, "event": "n", "data": {"c": name, "i": i}}
        return (await http.post(hub.api + "/publish", json=body)).status_code == 201

    async with httpx.AsyncClient(timeout=10.0) as http:
        live = Client(hub, [name])
        stop = asyncio.Event()
        reader = asyncio.create_task(live.run(http, stop))
        try:
            await asyncio.wait_for(live.connected.wait(), 20)
            async with open_stream(http, hub.api + f"/stream?channels={name}") as stream:
                assert (await stream.next_event()).event == "connected"
                for i in range(3):
                    assert await publish(http, i)
                behind = [await stream.next_event() for _ in range(3)]
            # Freeze the replica and cut its link: what the master accepts from now on is never replicated
            # (a frozen replica still receives into its socket buffer, hence the cut).
            os.kill(replica.process.pid, signal.SIGSTOP)
            try:
                assert cluster.node(victim_port).info("CLIENT", "KILL", "TYPE", "replica").strip() == "1"
                for i in range(3, 6):
                    assert await publish(http, i)
                deadline = time.monotonic() + 10
                while len(live.received) < 6 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert [i for _, i in live.received] == list(range(6))
                cluster.node(victim_port).kill()
            finally:
                os.kill(replica.process.pid, signal.SIGCONT)
            deadline = time.monotonic() + 60
            while cluster.master_of_slot(THREE_SHARDS[1][0]) in (0, victim_port) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert cluster.master_of_slot(THREE_SHARDS[1][0]) == replica.port
            published = False
            deadline = time.monotonic() + 30
            while not published and time.monotonic() < deadline:
                published = await publish(http, 6)
                if not published:
                    await asyncio.sleep(0.2)
            assert published
            deadline = time.monotonic() + 15
            while len(live.received) < 7 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert [i for _, i in live.received] == [*range(6), 6]
            assert live.resets == 0, "a client that saw every lost event missed nothing: no reset"
            headers = {"Last-Event-ID": behind[-1].id}
            async with open_stream(http, hub.api + f"/stream?channels={name}", headers=headers) as stream:
                connected = await stream.next_event()
                assert json.loads(connected.data)["resumed"] is False
                reset = await stream.next_event()
                assert reset.event == "reset"
                assert json.loads(reset.data) == {"reason": "history_expired", "channels": [name]}
        finally:
            stop.set()
            await asyncio.gather(reader, return_exceptions=True)
