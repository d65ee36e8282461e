"""Real ``redis-server`` processes for tests: free loopback port, temp dir, restart on the same port, PID cleanup.

Never the system Redis: every server here is spawned by the test on a port the OS just handed out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server")
SKIP_REASON = "redis-server is not on PATH (make test installs it; apt-get install redis-server)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ping(port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis on ``port`` answers PING with PONG (raw RESP, no client library)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process; ``start``/``kill``/``restart`` keep the port and the data directory.

    Args:
        appendonly: persist every write (``--appendonly yes --appendfsync always``) so data survives a kill.
        sentinel_conf: run as a Sentinel with this configuration text instead of as a server.
    """

    def __init__(self, *, appendonly: bool = False, sentinel_conf: str | None = None) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError(SKIP_REASON)
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ssehub-redis-"))
        self.appendonly = appendonly
        self.sentinel_conf = sentinel_conf
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        assert REDIS_SERVER is not None
        if self.sentinel_conf is not None:
            conf = self.dir / "sentinel.conf"
            if not conf.exists():
                conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n{self.sentinel_conf}\n")
            return [REDIS_SERVER, str(conf), "--sentinel"]
        command = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        if self.appendonly:
            command += ["--appendonly", "yes", "--appendfsync", "always"]
        return command

    def start(self, timeout: float = 10.0) -> None:
        """Spawn the server and wait until it answers PING."""
        log = (self.dir / "redis.log").open("ab")
        self.process = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {self.log_tail()}")
            if ping(self.port):
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout}s")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the process (SIGKILL by default: a crash) and reap it, by PID."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def restart(self) -> None:
        """Kill and start again on the same port (the append-only file, if any, brings the data back)."""
        self.kill()
        self.start()

    def log_tail(self) -> str:
        """The end of the server's log, for failure messages."""
        path = self.dir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def close(self) -> None:
        """Kill the process and remove its directory."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def redis_server(*, appendonly: bool = False) -> Iterator[RedisServer]:
    """A started RedisServer, closed on exit."""
    server = RedisServer(appendonly=appendonly)
    try:
        server.start()
        yield server
    finally:
        server.close()
