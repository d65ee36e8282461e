#!/usr/bin/env python3
"""Node-loss simulation: N hub processes on one Redis or a Redis Cluster, thousands of streams, nodes killed.

Streams are spread over the hubs; a publisher posts events on random channels through random live hubs;
every few seconds a random hub is killed (SIGKILL, by PID) and restarted on its port a moment later. A client
whose stream ends reconnects to a random live hub with its Last-Event-ID, as a browser's EventSource does.
At the end every client must hold every acknowledged event of its channels exactly once, in per-channel order,
with no reset (the retention outlasts the run). Publishes that were in flight when their hub died are
"ambiguous" (they may or may not have been stored): a client may hold them at most once.

    python scripts/node_loss.py --hubs 3 --streams 3000 --kills 4 --broker cluster

Prints a JSON report and exits 1 if any client lost, duplicated or reordered an event. Needs redis-server
(and redis-cli for --broker cluster); every process it starts is ended by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ssehub.testing import SSEParser  # noqa: E402
from tests.redis_server import free_port, redis_server  # noqa: E402


@dataclass
class Config:
    """One simulation's size."""

    hubs: int = 3
    streams: int = 3000
    channels: int = 100
    kills: int = 4
    duration: float = 30.0
    rate: float = 100.0
    broker: str = "redis"
    settle: float = 60.0
    seed: int = 1
    prefix: str = "ssehub"


@dataclass
class Report:
    """What the simulation measured; ``ok`` is the verdict."""

    config: dict[str, Any]
    published: int = 0
    ambiguous: int = 0
    failed_publishes: int = 0
    kills: int = 0
    reconnects: int = 0
    deliveries: int = 0
    missing: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    unexpected: int = 0
    resets: int = 0
    catch_up_seconds: float = 0.0
    wall_seconds: float = 0.0
    ok: bool = False
    errors: list[str] = field(default_factory=list)


class Hub:
    """One ``python -m ssehub serve`` process; killed and restarted on the same port."""

    def __init__(self, broker_url: str, workdir: Path, prefix: str) -> None:
        self.port = free_port()
        self.prefix = prefix
        self.broker_url = broker_url
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "SSEHUB_BROKER_URL": self.broker_url,
            "SSEHUB_REDIS_PREFIX": self.prefix,
            "SSEHUB_LOG_LEVEL": "warning",
            "SSEHUB_MAX_CONNECTIONS": "20000",
            "SSEHUB_HEARTBEAT_INTERVAL": "5",
            "PYTHONPATH": str(ROOT),
        }
        with (self.workdir / f"hub-{self.port}.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ssehub", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


async def _request(port: int, head: str, body: bytes = b"", timeout: float = 10.0) -> tuple[int, bytes]:
    """One HTTP/1.1 request with Connection: close; (status, body)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(head.encode() + body)
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data.partition(b"\r\n\r\n")[2]


async def _healthy(hub: Hub, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if hub.alive:
            with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
                status, body = await _request(
                    hub.port, "GET /api/v1/events/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=2
                )
                if status == 200 and b'"connected":true' in body.replace(b" ", b""):
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"hub on port {hub.port} not healthy within {within}s")


class Client:
    """One stream: reconnects to a random live hub with its last id whenever the stream ends."""

    def __init__(self, channels: list[str]) -> None:
        self.channels = channels
        self.received: list[tuple[str, int]] = []
        self.last_id = ""
        self.since = 0.0  # when its first stream was connected
        self.reconnects = 0
        self.resets = 0
        # For diagnosing a failure: (hub port, Last-Event-ID sent, index of the first event received on it).
        self.connections: list[tuple[int, str, int]] = []
        self.ids: list[str] = []  # the SSE id of each received event, beside ``received``

    async def run(self, hubs: list[Hub], stop: asyncio.Event) -> None:
        path = "/api/v1/events/stream?channels=" + ",".join(self.channels)
        while not stop.is_set():
            candidates = [hub for hub in hubs if hub.alive]
            if not candidates:
                await asyncio.sleep(0.2)
                continue
            hub = random.choice(candidates)
            with contextlib.suppress(OSError, TimeoutError, EOFError, ValueError, asyncio.IncompleteReadError):
                await self._stream(hub.port, path, stop)
            if not stop.is_set():
                self.reconnects += 1 if self.since else 0
                await asyncio.sleep(random.uniform(0.05, 0.5))

    async def _stream(self, port: int, path: str, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.connections.append((port, self.last_id, len(self.received)))
        try:
            resume = f"Last-Event-ID: {self.last_id}\r\n" if self.last_id else ""
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{resume}\r\n".encode())
            await writer.drain()
            status_line = await reader.readline()
            if b" 200 " not in status_line:
                raise ValueError(f"status {status_line!r}")
            chunked = False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                chunked = chunked or line.lower().startswith(b"transfer-encoding: chunked")
            parser = SSEParser()
            while not stop.is_set():
                if chunked:
                    size_line = await reader.readline()
                    if not size_line:
                        return
                    size = int(size_line.split(b";")[0], 16)
                    if size == 0:
                        return
                    data = await reader.readexactly(size + 2)
                    data = data[:-2]
                else:
                    data = await reader.read(65536)
                    if not data:
                        return
                for message in parser.feed(data):
                    if message.id:
                        self.last_id = message.id
                    if message.event == "connected" and not self.since:
                        self.since = time.monotonic()
                    elif message.event == "reset":
                        self.resets += 1
                    elif message.event == "n":
                        event = json.loads(message.data)
                        self.received.append((event["c"], event["i"]))
                        self.ids.append(message.id)
        finally:
            writer.close()


@contextlib.contextmanager
def _broker(kind: str) -> Iterator[str]:
    if kind == "cluster":
        from tests.cluster_server import local_cluster

        with local_cluster(masters=3) as cluster:
            yield cluster.url
    else:
        with redis_server() as server:
            yield server.url


async def simulate(config: Config, broker_url: str, workdir: Path) -> Report:
    """Run one simulation against ``broker_url``; every hub process is ended before it returns."""
    random.seed(config.seed)
    report = Report(config=asdict(config))
    started = time.monotonic()
    hubs = [Hub(broker_url, workdir, config.prefix) for _ in range(config.hubs)]
    names = [f"room:{n}" for n in range(config.channels)]
    clients = [Client(random.sample(names, random.randint(1, 3))) for _ in range(config.streams)]
    # channel -> [(i, publish started, acknowledged)]
    log: dict[str, list[tuple[int, float, bool]]] = {name: [] for name in names}
    stop_clients = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        for hub in hubs:
            hub.start()
        for hub in hubs:
            await _healthy(hub)
        tasks = [asyncio.create_task(c.run(hubs, stop_clients)) for c in clients]
        connect_deadline = time.monotonic() + 60
        while any(not c.since for c in clients) and time.monotonic() < connect_deadline:
            await asyncio.sleep(0.1)
        if any(not c.since for c in clients):
            report.errors.append(f"{sum(not c.since for c in clients)} clients never connected")

        async def publish_loop() -> None:
            counter = 0
            interval = 1.0 / config.rate
            end = time.monotonic() + config.duration
            while time.monotonic() < end:
                counter += 1
                name = random.choice(names)
                candidates = [hub for hub in hubs if hub.alive]
                began = time.monotonic()
                acked = False
                if candidates:
                    body = json.dumps({"channel": name, "event": "n", "data": {"c": name, "i": counter}}).encode()
                    head = (
                        "POST /api/v1/events/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                    )
                    try:
                        status, _ = await _request(random.choice(candidates).port, head, body)
                        acked = status == 201
                        if not acked:
                            report.failed_publishes += 1
                    except (OSError, TimeoutError, ValueError, IndexError):
                        report.ambiguous += 1
                log[name].append((counter, began, acked))
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - began)))

        async def kill_loop() -> None:
            for _ in range(config.kills):
                await asyncio.sleep(config.duration / (config.kills + 1))
                victim = random.choice([hub for hub in hubs if hub.alive])
                victim.kill()
                report.kills += 1
                await asyncio.sleep(1.0)
                victim.start()
                await _healthy(victim)

        await asyncio.gather(publish_loop(), kill_loop())
        published_at = time.monotonic()
        report.published = sum(1 for entries in log.values() for _, _, acked in entries if acked)

        def expected(client: Client) -> set[tuple[str, int]]:
            return {
                (name, i) for name in client.channels for i, began, acked in log[name] if acked and began > client.since
            }

        wanted = [expected(c) for c in clients]
        settle_end = time.monotonic() + config.settle
        while time.monotonic() < settle_end and not all(
            w <= set(c.received) for w, c in zip(wanted, clients, strict=True)
        ):
            await asyncio.sleep(0.2)
        report.catch_up_seconds = round(time.monotonic() - published_at, 2)
        await asyncio.sleep(1.0)  # anything arriving late would be a duplicate or unexpected
    finally:
        stop_clients.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for hub in hubs:
            hub.stop()
    for client, want in zip(clients, wanted, strict=True):
        got = client.received
        report.deliveries += len(got)
        report.reconnects += client.reconnects
        report.resets += client.resets
        report.duplicates += len(got) - len(set(got))
        if len(got) != len(set(got)) and len(report.errors) < 5:
            seen: dict[tuple[str, int], int] = {}
            for index, item in enumerate(got):
                if item in seen:
                    first = seen[item]
                    window = slice(max(0, first - 2), index + 2)
                    report.errors.append(
                        f"{item} received at {first} (id {client.ids[first]}) and {index} (id {client.ids[index]}); "
                        f"connections (port, Last-Event-ID, first index): {client.connections}; "
                        f"around: {list(zip(got[window], client.ids[window], strict=True))}"
                    )
                seen.setdefault(item, index)
        report.missing += len(want - set(got))
        # Anything received must have been published (acknowledged, or in flight when its hub died).
        attempted = {(name, i) for name in client.channels for i, _, _ in log[name]}
        report.unexpected += sum(1 for item in set(got) if item not in attempted)
        for name in client.channels:
            seq = [i for channel, i in got if channel == name]
            report.out_of_order += sum(1 for a, b in itertools.pairwise(seq) if b <= a)
    if report.duplicates or report.missing or report.out_of_order:
        report.errors += await asyncio.to_thread(_hub_logs, workdir)
    report.wall_seconds = round(time.monotonic() - started, 1)
    report.ok = not report.errors and not (
        report.missing or report.duplicates or report.out_of_order or report.unexpected or report.resets
    )
    return report


def _hub_logs(workdir: Path) -> list[str]:
    """The end of every hub's log, for a failure report."""
    return [f"{path.name}: {path.read_text(errors='replace')[-1500:]}" for path in sorted(workdir.glob("hub-*.log"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hubs", type=int, default=3)
    parser.add_argument("--streams", type=int, default=3000)
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of publishing")
    parser.add_argument("--rate", type=float, default=100.0, help="publishes per second")
    parser.add_argument("--broker", choices=["redis", "cluster"], default="redis")
    parser.add_argument("--settle", type=float, default=60.0, help="longest wait for clients to catch up")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    config = Config(**vars(args))
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ssehub-node-loss-") as workdir, _broker(config.broker) as url:
        report = asyncio.run(simulate(config, url, Path(workdir)))
    print(json.dumps(asdict(report), indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
