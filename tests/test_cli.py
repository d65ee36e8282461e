"""The ssehub command: serve (a real process), publish against it, refusal of workers on the memory broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from ssehub.testing import SSEMessage, SSEParser, free_port
from tests.serve_process import ROOT


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSEHUB_")}
    env["PYTHONPATH"] = str(ROOT)  # this checkout's ssehub, whatever is installed
    env.update(extra)
    return env


@dataclass
class Served:
    """A `ssehub serve` process and its API URL."""

    api: str
    process: subprocess.Popen[bytes]


@pytest.fixture
def served() -> Iterator[Served]:
    """`python -m ssehub serve` in its own process on a free port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ssehub", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=_env(SSEHUB_HEARTBEAT_INTERVAL="0.3"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{port}/api/v1/events"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read().decode() if process.stdout else ""
                pytest.fail(f"ssehub serve did not start:\n{output}")
            time.sleep(0.05)
        yield Served(api, process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if process.stdout:
            process.stdout.close()


def _ssehub(*args: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ssehub", *args], capture_output=True, text=True, timeout=timeout, env=_env()
    )


def test_publish_command_reaches_a_subscriber(served: Served) -> None:
    """`ssehub publish` posts to a running hub; a curl-like subscriber gets the event and heartbeats."""
    with httpx.Client(timeout=5) as client, client.stream("GET", f"{served.api}/stream") as response:
        parser = SSEParser()
        chunks = response.iter_raw()
        messages = parser.feed(next(chunks))
        assert messages[0].event == "connected"
        result = _ssehub(
            "publish",
            "download:updates",
            "download_progress",
            '{"download_id": 1, "progress": 10}',
            "--url",
            served.api,
        )
        assert result.returncode == 0, result.stderr
        published = json.loads(result.stdout)
        seen: list[SSEMessage] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(m.event == "download_progress" for m in seen):
            seen.extend(parser.feed(next(chunks)))
        progress = [m for m in seen if m.event == "download_progress"]
        assert progress[0].id == published["id"]
        assert json.loads(progress[0].data) == {"download_id": 1, "progress": 10}
        while not any(m.event == "heartbeat" for m in seen) and time.monotonic() < deadline:
            seen.extend(parser.feed(next(chunks)))
        assert any(m.event == "heartbeat" for m in seen)


def test_publish_command_errors(served: Served) -> None:
    """Bad DATA, a refused publish and an unreachable hub each exit non-zero with a clear message."""
    bad_json = _ssehub("publish", "a:1", "e", "not json", "--url", served.api)
    assert bad_json.returncode == 2
    assert "DATA must be JSON" in bad_json.stderr
    refused = _ssehub("publish", "bad channel", "e", "1", "--url", served.api)
    assert refused.returncode == 1
    assert "422" in refused.stderr
    assert "INVALID_CHANNEL" in refused.stderr
    unreachable = _ssehub("publish", "a:1", "e", "1", "--url", f"http://127.0.0.1:{free_port()}/x", "--timeout", "2")
    assert unreachable.returncode == 1
    assert "cannot reach" in unreachable.stderr


def test_sigterm_ends_streams_cleanly(served: Served) -> None:
    """On SIGTERM the server ends open streams cleanly (the chunked body ends) and exits promptly."""
    with httpx.Client(timeout=5) as client, client.stream("GET", f"{served.api}/stream") as response:
        chunks = response.iter_raw()
        assert b"event: connected" in next(chunks)
        served.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        b"".join(chunks)  # returns only when the server ends the body cleanly (a reset would raise)
        assert time.monotonic() - started < 8
    # uvicorn re-raises the signal after a clean shutdown, so the exit status is -SIGTERM.
    assert served.process.wait(10) in (0, -signal.SIGTERM)
    assert served.process.stdout is not None
    log = served.process.stdout.read().decode()
    assert "Application shutdown complete" in log
    assert "Traceback" not in log


def test_workers_refused_on_memory_broker() -> None:
    """--workers > 1 with the memory broker refuses with a message saying why and what to do."""
    result = _ssehub("serve", "--workers", "2", "--port", str(free_port()))
    assert result.returncode == 2
    assert "shared broker" in result.stderr
    assert "SSEHUB_BROKER_URL=redis://" in result.stderr


def test_invalid_settings_are_reported() -> None:
    """A bad setting stops `ssehub serve` with the variable named, before anything starts."""
    result = subprocess.run(
        [sys.executable, "-m", "ssehub", "serve"],
        capture_output=True,
        text=True,
        timeout=15,
        env=_env(SSEHUB_MAX_CONNECTIONS="many"),
    )
    assert result.returncode == 2
    assert "max_connections" in result.stderr
