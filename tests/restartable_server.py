"""`ssehub serve` as a real process that can be stopped and started again on the same port (the demo and client
tests: a browser or client must find the server where it was). Stopped by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from ssehub.testing import free_port

ROOT = Path(__file__).resolve().parent.parent


class RestartableServer:
    """`python -m ssehub serve`, restartable on the same port; ``settings`` become SSEHUB_* variables.

    The demo is on unless ``demo="false"`` is given (it is what `make run` serves).
    """

    def __init__(self, **settings: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.api = self.base + "/api/v1/events"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SSEHUB_")}
        # Served processes import this checkout, whatever is installed.
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), self.env.get("PYTHONPATH")]))
        self.env.update(
            {
                "SSEHUB_DEMO": "true",
                "SSEHUB_RETRY_MS": "300",
                "SSEHUB_HEARTBEAT_INTERVAL": "2",
                "SSEHUB_LOG_LEVEL": "warning",
            }
        )
        self.env.update({f"SSEHUB_{key.upper()}": value for key, value in settings.items()})
        self.log = Path(tempfile.mkstemp(prefix="ssehub-serve-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        """Spawn the server and wait until /health answers."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ssehub", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(self.api + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ssehub serve did not start:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (streams end cleanly, as on a deploy) and reap, by PID."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def close(self) -> None:
        """Stop and remove the log."""
        self.stop()
        self.log.unlink(missing_ok=True)


@contextlib.contextmanager
def serve(**settings: str) -> Iterator[RestartableServer]:
    """A started RestartableServer, closed afterwards."""
    server = RestartableServer(**settings)
    try:
        server.start()
        yield server
    finally:
        server.close()
