"""`ssehub serve --workers N` on Redis: every worker process shares channels, history and ids."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ssehub.testing import open_stream
from tests.redis_server import RedisServer, free_port
from tests.serve_process import ROOT

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
def workers(redis_server: RedisServer, tmp_path: Path) -> Iterator[str]:
    """`ssehub serve --workers 3` on the test's Redis; yields the API URL."""
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "SSEHUB_BROKER_URL": redis_server.url, "SSEHUB_LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ssehub", "serve", "--port", str(port), "--workers", "3"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    api = f"http://127.0.0.1:{port}/api/v1/events"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{api}/health", timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ssehub serve --workers 3 did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield api
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


async def test_every_worker_delivers_every_event(workers: str) -> None:
    """Streams spread over the workers each receive every event published through any worker, once, in order."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)  # new connection per request
    async with httpx.AsyncClient(timeout=10, limits=limits) as client, contextlib.AsyncExitStack() as stack:
        streams = []
        for _ in range(12):
            stream = await stack.enter_async_context(open_stream(client, f"{workers}/stream?channels=jobs:1"))
            assert (await stream.next_event()).event == "connected"
            streams.append(stream)
        ids = []
        for n in range(10):
            response = await client.post(
                f"{workers}/publish", json={"channel": "jobs:1", "event": "job_update", "data": {"n": n}}
            )
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
        for stream in streams:
            received = await stream.take(10, timeout=10)
            assert [m.id for m in received] == ids
            assert [json.loads(m.data)["n"] for m in received] == list(range(10))
        # Health answers from whichever worker takes the request: each reports the shared broker as up.
        for _ in range(6):
            health = (await client.get(f"{workers}/health")).json()
            assert health["broker"]["connected"] is True
