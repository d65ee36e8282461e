"""End to end: several ``ssehub serve`` processes on one Redis, subscribers over HTTP, publishers everywhere."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ssehub.events import EventId
from ssehub.testing import EventStream, SSEMessage, open_stream
from tests.redis_server import RedisServer, free_port

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Node:
    """One hub process."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/events"

    def kill(self) -> None:
        """SIGKILL the process (a crashed node) and reap it."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time; always reaped."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def start_nodes(redis_server: RedisServer, tmp_path: Path) -> Iterator[Callable[[int], list[Node]]]:
    """Start hub processes on the test's Redis (``python -m ssehub serve``) and wait until each is healthy."""
    nodes: list[Node] = []

    def start(count: int) -> list[Node]:
        started = []
        for _ in range(count):
            port = free_port()
            log = tmp_path / f"hub-{port}.log"
            env = {
                **os.environ,
                "SSEHUB_BROKER_URL": redis_server.url,
                "SSEHUB_LOG_LEVEL": "warning",
                "PYTHONPATH": str(ROOT),
            }
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", "ssehub", "serve", "--host", "127.0.0.1", "--port", str(port)],
                    env=env,
                    cwd=tmp_path,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            node = Node(process, port, log)
            nodes.append(node)
            started.append(node)
        for node in started:
            _wait_healthy(node)
        return started

    try:
        yield start
    finally:
        for node in nodes:
            node.stop()


def _wait_healthy(node: Node, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            raise RuntimeError(f"hub exited with {node.process.returncode}: {node.log.read_text()[-2000:]}")
        try:
            response = httpx.get(node.api + "/health", timeout=1.0)
            if response.status_code == 200 and response.json()["broker"]["connected"]:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"hub on port {node.port} not healthy within {within}s: {node.log.read_text()[-2000:]}")


async def _collect(stream: EventStream, count: int, within: float = 20.0) -> list[SSEMessage]:
    """The next ``count`` published events (opening frames and heartbeats skipped)."""
    deadline = time.monotonic() + within
    events: list[SSEMessage] = []
    while len(events) < count:
        message = await stream.next_event(max(0.01, deadline - time.monotonic()))
        if message.event == "n":
            events.append(message)
    return events


def _publisher_process(url: str, count: int) -> subprocess.Popen[bytes]:
    """Another process publishing ``count`` events on channel ``b`` with ssehub.publisher.Publisher."""
    code = (
        "import json, sys, time\n"
        "from ssehub.publisher import Publisher\n"
        "ids = []\n"
        f"with Publisher.from_url({url!r}) as p:\n"
        f"    for i in range({count}):\n"
        "        ids.append(p.publish('b', 'n', {'from': 'publisher', 'i': i}))\n"
        "        time.sleep(0.005)\n"
        "print(json.dumps(ids))\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )


async def test_every_subscriber_on_every_node_gets_every_event_once_in_order(
    redis_server: RedisServer, start_nodes: Callable[[int], list[Node]]
) -> None:
    """Events published through each node's API and through Publisher reach every subscriber once, in id order."""
    nodes = start_nodes(3)
    per_node_http = 12
    from_publisher = 20
    total = per_node_http * len(nodes) + from_publisher
    limits = httpx.Limits(max_connections=None)
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=10.0, limits=limits))
        streams = [
            await stack.enter_async_context(open_stream(client, node.api + f"/stream?channels={channels}", timeout=20))
            for node, channels in zip([*nodes, nodes[2]], ["a,b", "a,b", "a,b", "b,a"], strict=True)
        ]
        for stream in streams:
            assert (await stream.next_event()).event == "connected"
        publisher = _publisher_process(redis_server.url, from_publisher)
        try:
            ids: list[str] = []
            for i in range(per_node_http):
                for n, node in enumerate(nodes):
                    body = {"channel": "ab"[(i + n) % 2], "event": "n", "data": {"node": n, "i": i}}
                    response = await client.post(node.api + "/publish", json=body)
                    assert response.status_code == 201, response.text
                    ids.append(response.json()["id"])
            out, _ = await asyncio.to_thread(publisher.communicate, timeout=30)
        finally:
            if publisher.poll() is None:
                publisher.kill()
                publisher.wait(timeout=10)
        assert publisher.returncode == 0
        ids += json.loads(out)
        expected = sorted(ids, key=EventId.parse)
        assert len(set(expected)) == total
        received = await asyncio.gather(*(_collect(stream, total) for stream in streams))
    for events in received:
        assert [event.id for event in events] == expected


async def test_subscribers_of_a_killed_node_resume_on_another_without_gap(
    start_nodes: Callable[[int], list[Node]],
) -> None:
    """When a node dies mid-stream, its clients resume on other nodes with Last-Event-ID and miss nothing."""
    doomed, steady, other = start_nodes(3)
    count = 60
    async with httpx.AsyncClient(timeout=10.0, limits=httpx.Limits(max_connections=None)) as client:
        ready = [asyncio.Event(), asyncio.Event()]

        async def publish_all() -> list[str]:
            async with asyncio.timeout(20):
                for flag in ready:
                    await flag.wait()
            ids = []
            for i in range(count):
                response = await client.post(steady.api + "/publish", json={"channel": "a", "event": "n", "data": i})
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])
                await asyncio.sleep(0.01)
            return ids

        async def subscriber(resume_on: Node, by_query: bool) -> list[SSEMessage]:
            seen: list[SSEMessage] = []
            async with open_stream(client, doomed.api + "/stream?channels=a", timeout=20) as stream:
                assert (await stream.next_event()).event == "connected"
                ready[by_query].set()
                try:
                    while True:
                        message = await stream.next_event(20)
                        if message.event == "n":
                            seen.append(message)
                            if len(seen) == 20 and not by_query:
                                doomed.kill()
                except (EOFError, httpx.HTTPError):
                    pass
            assert seen, "the doomed node delivered nothing before it died"
            last = seen[-1].id
            if by_query:
                url, headers = resume_on.api + f"/stream?channels=a&lastEventId={last}", None
            else:
                url, headers = resume_on.api + "/stream?channels=a", {"Last-Event-ID": last}
            async with open_stream(client, url, headers=headers, timeout=20) as stream:
                connected = await stream.next_event()
                assert connected.event == "connected"
                assert json.loads(connected.data)["resumed"] is True
                seen += await _collect(stream, count - len(seen))
            return seen

        results = await asyncio.gather(publish_all(), subscriber(steady, False), subscriber(other, True))
    ids, *sessions = results
    for seen in sessions:
        assert [int(message.data) for message in seen] == list(range(count))
        assert [message.id for message in seen] == ids
