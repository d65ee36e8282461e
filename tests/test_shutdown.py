"""Graceful shutdown of one `ssehub serve` process: streams end cleanly, queued events go out, exit is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from ssehub import EventId, Hub, MemoryBroker
from ssehub._server import EXIT_RESERVE, HubServer
from ssehub._supervisor import MAX_RESTARTS
from ssehub.app import create_app
from ssehub.testing import free_port, open_stream
from tests.conftest import make_settings
from tests.readers import Reader, read_stream, wait_ready
from tests.serve_process import ROOT, clean_env, serve_process

pytestmark = pytest.mark.anyio

GRACE = 3.0
#: Slack for a busy 2-core machine on top of the documented bound (grace + EXIT_RESERVE).
SLACK = 5.0
#: Hundreds of streams and fast publishing from one test client: the per-client limits would refuse them.
UNLIMITED = {"SSEHUB_MAX_STREAMS_PER_CLIENT": "0", "SSEHUB_PUBLISH_RATE": "0"}


async def test_sigterm_ends_hundreds_of_streams_cleanly_within_the_grace_period(tmp_path: Path) -> None:
    """SIGTERM with 300 open streams: each stream gets the events queued for it, then a clean end; the process
    exits within the grace period plus its exit reserve."""
    with serve_process(tmp_path, SSEHUB_SHUTDOWN_GRACE=str(GRACE), SSEHUB_LOG_LEVEL="warning", **UNLIMITED) as served:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            readers = [Reader() for _ in range(300)]
            url = f"{served.api}/stream?channels=jobs:1"
            tasks = [asyncio.create_task(read_stream(client, url, reader)) for reader in readers]
            await wait_ready(readers)
            ids = []
            for n in range(3):
                response = await client.post(
                    f"{served.api}/publish", json={"channel": "jobs:1", "event": "job", "data": {"n": n}}
                )
                assert response.status_code == 201
                ids.append(response.json()["id"])
            # No wait for the clients to read: what is queued must still go out before each stream ends.
            elapsed = await asyncio.to_thread(served.terminate, GRACE + EXIT_RESERVE + SLACK)
            async with asyncio.timeout(30):
                await asyncio.gather(*tasks)
    assert elapsed < GRACE + EXIT_RESERVE + SLACK
    assert served.process.returncode in (0, -signal.SIGTERM)
    for reader in readers:
        assert reader.error is None
        assert reader.ended_cleanly
        assert reader.ids == ids
    assert "Traceback" not in served.log()


def test_a_client_that_stops_reading_does_not_hold_the_shutdown(tmp_path: Path) -> None:
    """A client that stops reading (its socket full) cannot keep the process alive past the grace bound."""
    grace = 1.0
    with serve_process(
        tmp_path,
        SSEHUB_SHUTDOWN_GRACE=str(grace),
        SSEHUB_MAX_BUFFER_BYTES=str(64 * 1024 * 1024),
        SSEHUB_LOG_LEVEL="warning",
        **UNLIMITED,
    ) as served:
        port = int(served.base_url.rsplit(":", 1)[1])
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(("127.0.0.1", port))
        stuck.sendall(b"GET /api/v1/events/stream?channels=big HTTP/1.1\r\nHost: test\r\n\r\n")
        assert b"200 OK" in stuck.recv(4096)  # the stream started; from now on this client reads nothing
        payload = "x" * 60000
        with httpx.Client(timeout=10) as client:
            for _ in range(100):  # ~6 MB: far more than the socket buffers hold
                response = client.post(
                    f"{served.api}/publish", json={"channel": "big", "event": "blob", "data": payload}
                )
                assert response.status_code == 201
        try:
            elapsed = served.terminate(grace + EXIT_RESERVE + SLACK)
        finally:
            stuck.close()
    assert elapsed < grace + EXIT_RESERVE + SLACK


@contextlib.asynccontextmanager
async def _in_loop_server(hub: Hub) -> AsyncIterator[tuple[HubServer, str]]:
    """ssehub's server in this test's event loop (so the test can act on the hub directly); yields its API URL."""
    port = free_port()
    config = uvicorn.Config(create_app(hub=hub), host="127.0.0.1", port=port, log_level="warning")
    server = HubServer(config, hub, exit_watchdog=False)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        yield server, f"http://127.0.0.1:{port}{hub.settings.prefix}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(15):
            await task
        server.disarm()


async def test_streams_asked_for_during_shutdown_get_503_with_retry_after() -> None:
    """Once shutdown has begun, a stream request still reaching the hub is answered 503 HUB_NOT_RUNNING with
    Retry-After, and the streams already open end cleanly."""
    hub = Hub(make_settings(shutdown_grace=2.0))
    async with _in_loop_server(hub) as (_server, api), httpx.AsyncClient(timeout=5) as client:
        async with open_stream(client, f"{api}/stream?channels=a") as stream:
            assert (await stream.next_event()).event == "connected"
            hub.end_streams()  # what HubServer.shutdown does first on SIGTERM
            await stream.wait_end(5)
            assert stream.ended
        response = await client.get(f"{api}/stream?channels=a")
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert response.json()["code"] == "HUB_NOT_RUNNING"


async def test_server_shutdown_ends_open_streams_and_returns_promptly() -> None:
    """HubServer's shutdown (what SIGTERM triggers) ends open streams cleanly and finishes well within the grace."""
    hub = Hub(make_settings(shutdown_grace=5.0))
    async with httpx.AsyncClient(timeout=5) as client:
        async with _in_loop_server(hub) as (server, api), open_stream(client, f"{api}/stream?channels=a") as stream:
            assert (await stream.next_event()).event == "connected"
            started = time.monotonic()
            server.should_exit = True
            await stream.wait_end(5)
            assert stream.ended
        assert time.monotonic() - started < 5.0


class _HeldHeadBroker(MemoryBroker):
    """The memory broker, with ``head()`` held until the test lets it go (a slow catch-up)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    async def head(self) -> EventId:
        self.asked.set()
        await self.release.wait()
        return await super().head()


async def test_a_stream_still_catching_up_when_shutdown_begins_ends_too() -> None:
    """A stream whose catch-up was in progress when shutdown began is ended as soon as it opens."""
    broker = _HeldHeadBroker()
    hub = Hub(make_settings(), broker=broker)
    async with hub:
        opening = asyncio.create_task(hub.open(["a"]))
        async with asyncio.timeout(5):
            await broker.asked.wait()
        hub.end_streams()
        broker.release.set()
        async with asyncio.timeout(5):
            sub = await opening
        try:
            assert sub.connection.closed
            assert sub.connection.close_reason == "shutdown"
        finally:
            hub.release(sub)


def test_supervisor_gives_up_on_workers_that_keep_crashing(tmp_path: Path) -> None:
    """Workers that crash at once are restarted a bounded number of times; then the supervisor stops with status 1."""
    script = (
        "import sys\n"
        "from ssehub._supervisor import Supervisor\n"
        "from ssehub.settings import Settings\n"
        "from tests.supervised import crash_at_start\n"
        "settings = Settings(_env_file=None, port=0, broker_url='redis://127.0.0.1:1/0')\n"
        "sys.exit(Supervisor(settings, 2, target=crash_at_start).run())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=clean_env(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("restarting it") == MAX_RESTARTS
    assert "stopping" in result.stderr
    assert not list(tmp_path.glob("ssehub-metrics-*"))
