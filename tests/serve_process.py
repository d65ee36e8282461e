"""``ssehub serve`` as a real process on a free port, for the shutdown, worker, metrics and log tests."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from ssehub.testing import free_port

#: The checkout these tests belong to: served processes import ssehub from it, whatever is installed.
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ServeProcess:
    """A running ``ssehub serve``: its process, URLs and the file its output goes to."""

    process: subprocess.Popen[bytes]
    base_url: str
    api: str
    log_path: Path

    def log(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> dict[int, int]:
        """The latest pid of each worker slot, from the supervisor's log lines."""
        return {int(slot): int(pid) for slot, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", self.log())}

    def terminate(self, timeout: float) -> float:
        """SIGTERM the process and wait for it to exit; return how long that took (seconds).

        Raises:
            subprocess.TimeoutExpired: it did not exit within ``timeout`` (it is then killed).
        """
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise
        return time.monotonic() - started


def clean_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment for a served process: no SSEHUB_* from outside, temp files under ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SSEHUB_", "PROMETHEUS_"))}
    env["TMPDIR"] = str(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(settings)
    return env


@contextlib.contextmanager
def serve_process(tmp_path: Path, workers: int = 1, /, **settings: str) -> Iterator[ServeProcess]:
    """Start ``python -m ssehub serve`` with ``settings`` (``SSEHUB_*`` names) and wait until /health answers 200.

    The process is stopped (SIGTERM, then SIGKILL) at the end if the test has not stopped it.
    """
    port = free_port()
    log_path = tmp_path / f"serve-{port}.log"
    command = [sys.executable, "-m", "ssehub", "serve", "--port", str(port), "--workers", str(workers)]
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            command, env=clean_env(tmp_path, **settings), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
        )
    base_url = f"http://127.0.0.1:{port}"
    served = ServeProcess(process, base_url, f"{base_url}/api/v1/events", log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{served.api}/health", timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ssehub serve did not start:\n{served.log()}")
            time.sleep(0.05)
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
