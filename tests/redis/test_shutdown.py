"""Graceful shutdown on Redis, with and without workers: clients resume on another node with nothing lost or doubled;
ssehub's worker supervisor restarts a dead worker, and its metrics add up across workers."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ssehub._server import EXIT_RESERVE
from tests.readers import Reader, read_stream, wait_ready
from tests.redis_server import RedisServer
from tests.serve_process import serve_process

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

GRACE = 3.0
SLACK = 5.0
STREAMS = 200


@pytest.mark.parametrize("workers", [1, 3], ids=["one-process", "three-workers"])
async def test_sigterm_mid_publishing_then_resume_on_another_node_loses_nothing(
    redis_server: RedisServer, tmp_path: Path, workers: int
) -> None:
    """While events are being published, SIGTERM a node holding 200 streams: every stream ends cleanly, the node
    exits within its grace bound, and each client resuming on another node with its Last-Event-ID ends up with
    every published event exactly once, in order."""
    common = {
        "SSEHUB_BROKER_URL": redis_server.url,
        "SSEHUB_LOG_LEVEL": "warning",
        "SSEHUB_MAX_CONNECTIONS": "2000",
        # Hundreds of streams and fast publishing from one test client: the per-client limits would refuse them.
        "SSEHUB_MAX_STREAMS_PER_CLIENT": "0",
        "SSEHUB_PUBLISH_RATE": "0",
    }
    with (
        serve_process(tmp_path, workers, SSEHUB_SHUTDOWN_GRACE=str(GRACE), **common) as node_a,
        serve_process(tmp_path, **common) as node_b,
    ):
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            readers = [Reader() for _ in range(STREAMS)]
            tasks = [
                asyncio.create_task(read_stream(client, f"{node_a.api}/stream?channels=jobs:1", reader))
                for reader in readers
            ]
            await wait_ready(readers)

            published: list[str] = []

            async def publish(count: int) -> None:
                # Through node B, which stays up: publishing goes on across node A's shutdown.
                for n in range(count):
                    response = await client.post(
                        f"{node_b.api}/publish", json={"channel": "jobs:1", "event": "job", "data": {"n": n}}
                    )
                    assert response.status_code == 201, response.text
                    published.append(response.json()["id"])
                    await asyncio.sleep(0.01)

            publisher = asyncio.create_task(publish(60))
            async with asyncio.timeout(30):
                while len(published) < 20:
                    await asyncio.sleep(0.01)
            elapsed = await asyncio.to_thread(node_a.terminate, GRACE + EXIT_RESERVE + 3 + SLACK)
            async with asyncio.timeout(30):
                await asyncio.gather(*tasks)
            errors = [r.error for r in readers if r.error]
            assert not errors, (len(errors), elapsed)
            for reader in readers:
                assert reader.error is None
                assert reader.ended_cleanly

            # Every client comes back on node B with the id it last saw, as a browser does, and reads until it
            # holds as many events as were published.
            async with asyncio.timeout(30):
                await publisher
            resumed = [
                asyncio.create_task(
                    read_stream(
                        client,
                        f"{node_b.api}/stream?channels=jobs:1",
                        reader,
                        last_event_id=reader.last_id,
                        until=len(published),
                    )
                )
                for reader in readers
            ]
            async with asyncio.timeout(60):
                await asyncio.gather(*resumed)
    assert elapsed < GRACE + EXIT_RESERVE + 3 + SLACK
    for reader in readers:
        assert reader.error is None
        assert reader.ids == published  # nothing lost, nothing twice, in order
        assert '"resumed":true' in reader.connected[-1].data
    assert "Traceback" not in node_a.log()


def _metrics_dirs(tmp_path: Path) -> list[Path]:
    """The supervisor's metrics directories under the served process's TMPDIR."""
    return list(tmp_path.glob("ssehub-metrics-*"))


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, by (sample name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_add_up_across_workers_and_their_directory_is_removed(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """With three workers, /metrics (answered by any worker) counts every worker's streams and deliveries; after
    the streams close the open-streams gauge returns to 0; the supervisor removes its metrics directory at exit."""
    with serve_process(tmp_path, 3, SSEHUB_BROKER_URL=redis_server.url, SSEHUB_LOG_LEVEL="warning") as served:
        assert _metrics_dirs(tmp_path)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)  # spread over the workers
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:
            readers = [Reader() for _ in range(12)]
            tasks = [
                asyncio.create_task(read_stream(client, f"{served.api}/stream?channels=jobs:2", reader, until=10))
                for reader in readers
            ]
            await wait_ready(readers)
            for n in range(10):
                response = await client.post(
                    f"{served.api}/publish", json={"channel": "jobs:2", "event": "job", "data": {"n": n}}
                )
                assert response.status_code == 201
            async with asyncio.timeout(20):
                await asyncio.gather(*tasks)

            async def scrape_until(expected: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> None:
                # Other workers copy their counters every second: poll, bounded.
                deadline = time.monotonic() + 15
                while True:
                    response = await client.get(f"{served.base_url}/metrics")
                    assert response.status_code == 200
                    samples = _samples(response.text)
                    if all(samples.get(key) == value for key, value in expected.items()):
                        return
                    if time.monotonic() > deadline:
                        wrong = {key: samples.get(key) for key, value in expected.items() if samples.get(key) != value}
                        pytest.fail(f"metrics never matched: {wrong}")
                    await asyncio.sleep(0.2)

            # The readers left their streams after 10 events each: 12 opened, 12 closed by the client.
            await scrape_until(
                {
                    ("ssehub_streams_opened_total", ()): 12,
                    ("ssehub_events_published_total", ()): 10,
                    ("ssehub_events_delivered_total", ()): 120,
                    ("ssehub_streams_closed_total", (("reason", "client"),)): 12,
                    ("ssehub_streams_open", ()): 0,
                }
            )
        served.terminate(GRACE + 10 + EXIT_RESERVE)
    assert not _metrics_dirs(tmp_path)


async def test_supervisor_restarts_a_worker_that_dies(redis_server: RedisServer, tmp_path: Path) -> None:
    """A worker killed with SIGKILL is replaced by a new process; the service keeps serving streams and still shuts
    down cleanly."""
    with serve_process(tmp_path, 2, SSEHUB_BROKER_URL=redis_server.url) as served:
        async with asyncio.timeout(15):
            while len(served.worker_pids()) < 2:
                await asyncio.sleep(0.05)
        before = served.worker_pids()
        os.kill(before[0], signal.SIGKILL)
        async with asyncio.timeout(15):
            while served.worker_pids().get(0) == before[0]:
                await asyncio.sleep(0.05)
        assert served.worker_pids()[0] != before[0]
        assert "worker 0 (pid" in served.log()
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(4):  # whichever worker answers, it answers
                response = await client.get(f"{served.api}/health")
                assert response.status_code == 200
        elapsed = served.terminate(10.0 + EXIT_RESERVE + 3 + SLACK)
        assert elapsed < 10.0 + EXIT_RESERVE + 3 + SLACK
        assert served.process.returncode == 0
        log = served.log()
    assert "restarting it" in log
    assert "stopping 2 workers" in log


async def test_workers_exit_when_the_supervisor_is_killed(redis_server: RedisServer, tmp_path: Path) -> None:
    """Workers whose supervisor was killed (SIGKILL, no chance to stop them) shut themselves down."""
    with serve_process(tmp_path, 2, SSEHUB_BROKER_URL=redis_server.url) as served:
        async with asyncio.timeout(15):
            while len(served.worker_pids()) < 2:
                await asyncio.sleep(0.05)
        pids = list(served.worker_pids().values())
        served.process.kill()
        served.process.wait(10)
        async with asyncio.timeout(20):
            while any(_alive(pid) for pid in pids):
                await asyncio.sleep(0.1)


def _alive(pid: int) -> bool:
    """Whether a process with this pid still runs (a zombie, exited but not reaped by init yet, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
