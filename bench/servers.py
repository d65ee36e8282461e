"""The servers under test: ssehub (memory or Redis broker), nginx + nchan, the naive baseline, and redis-server.

Each server runs on a free loopback port, pinned with ``taskset -c <server core>``, from files in its own temp
dir, and is stopped by the PID this module started (SIGTERM, then SIGKILL). Nothing here touches a system
service: Redis is always our own ``redis-server`` on a free port, nginx runs from our own config.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
NAIVE_PY = BENCH / ".venv-naive" / "bin" / "python"
NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"
#: The API key of the "ssehub-auth" variant: subscribe and publish on the bench channels (docs/security.md).
BENCH_API_KEY = "bench-key-0123456789abcdef"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until something accepts on the port; fail fast if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def process_tree(pid: int) -> list[int]:
    """The PID and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def rss_kib(pids: list[int]) -> int:
    """Sum of VmRSS (KiB) over the processes."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else "unknown"


class Server:
    """A process we started and own. Subclasses fill in ``command`` and ``env``."""

    name = "server"
    core = "0"
    sub_path = ""  # printf format for the load generator, %d = channel number
    pub_path = ""
    pub_raw = False  # publish the event data as the raw body (nchan) instead of ssehub's JSON envelope
    header: str | None = None  # sent by the load generator with every request (credentials)
    resumes = False  # keeps history and resumes from Last-Event-ID

    def __init__(self) -> None:
        self.port = free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"ssehub-bench-{self.name}-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.tmp / "server.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> Server:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                ["taskset", "-c", self.core, *self.command()],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.tmp,
                start_new_session=True,
            )
        try:
            wait_port(self.port, self.proc)
        except RuntimeError as exc:
            tail = self.log_tail(12)
            self.stop()
            raise RuntimeError(f"{self.name}: {exc}; its log ends:\n{tail}") from exc
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def pids(self) -> list[int]:
        return process_tree(self.pid) if self.proc and self.proc.poll() is None else []

    def rss_kib(self) -> int:
        return rss_kib(self.pids())

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                # only our own process group: start_new_session made the server its leader
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Redis(Server):
    """Our own redis-server; ``core`` "1" puts it beside the load generator instead of beside the hub."""

    name = "redis"

    def __init__(self, core: str = "0") -> None:
        super().__init__()
        self.core = core

    def command(self) -> list[str]:
        return [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--maxclients", "19000", "--dir", str(self.tmp), "--protected-mode", "yes", "--loglevel", "warning",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def version() -> str:
        return _version(["redis-server", "--version"])


class Ssehub(Server):
    """ssehub as its users run it: ``python -m ssehub serve``."""

    name = "ssehub"
    sub_path = "/api/v1/events/stream?channels=bench%d"
    pub_path = "/api/v1/events/publish"
    pub_raw = False
    resumes = True

    def __init__(
        self, redis: Redis | None = None, *, auth: bool = False, metrics: bool = True, root: Path = ROOT
    ) -> None:
        super().__init__()
        self.redis = redis
        self.auth = auth
        self.metrics = metrics  # False: the "ssehub-nometrics" variant (SSEHUB_METRICS=off)
        self.root = root  # the checkout whose ssehub is served (bench/profile.py can serve an older commit)
        if auth:
            # Every stream and publish authenticates with an API key: the check runs once per request.
            self.header = f"Authorization: Bearer {BENCH_API_KEY}"

    def command(self) -> list[str]:
        python = str(ROOT / ".venv/bin/python")
        return [python, "-m", "ssehub", "serve", "--host", "127.0.0.1", "--port", str(self.port)]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            SSEHUB_HEARTBEAT_INTERVAL="30",
            SSEHUB_MAX_CONNECTIONS="20000",
            SSEHUB_MAX_CHANNELS="20000",
            # The load generator is one client address opening thousands of streams and publishing fast.
            # With the "ssehub-auth" variant it is also one identity (one API key).
            SSEHUB_MAX_STREAMS_PER_CLIENT="0",
            SSEHUB_MAX_STREAMS_PER_IDENTITY="0",
            SSEHUB_PUBLISH_RATE="0",
            SSEHUB_BROKER_URL=self.redis.url if self.redis else "memory://",
            SSEHUB_LOG_LEVEL="warning",  # no access log line per request, as for the peers
            # this working tree's ssehub, even when the venv holds an (editable) install of another checkout
            PYTHONPATH=str(self.root),
        )
        if not self.metrics:
            env["SSEHUB_METRICS"] = "off"
        if self.auth:
            key = {"key": BENCH_API_KEY, "scopes": ["subscribe", "publish"], "channels": ["bench*"], "name": "bench"}
            env["SSEHUB_API_KEYS"] = json.dumps([key])
        return env

    def pids(self) -> list[int]:
        # Redis counts as the server's only while it shares the hub's core.
        pids = super().pids()
        return pids + (self.redis.pids() if self.redis and self.redis.core == self.core else [])

    def relay_command(self) -> str:
        """The ``loadgen --pub-exec`` command: bench/relay.py publishing with ssehub.Publisher to our Redis."""
        assert self.redis is not None
        # exec: the relay process is the one the load generator started (its CPU is read by PID)
        return f"exec env PYTHONPATH={ROOT} {ROOT / '.venv/bin/python'} {BENCH / 'relay.py'} {self.redis.url} 20000"

    @staticmethod
    def version() -> str:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return f"ssehub (git {out.stdout.strip() or 'unknown'}, working tree)"


class Nchan(Server):
    """nginx + nchan from our own config: its own prefix, pid, logs and temp paths."""

    name = "nchan"
    sub_path = "/sub/bench%d"
    pub_path = "/pub/bench%d"
    pub_raw = True
    resumes = True

    def command(self) -> list[str]:
        conf = self.tmp / "nginx.conf"
        t = self.tmp
        conf.write_text(f"""
load_module {NCHAN_MODULE};
worker_processes 1;
daemon off;
master_process on;
pid {t}/nginx.pid;
error_log {t}/error.log warn;
worker_rlimit_nofile 19500;
events {{ worker_connections 19000; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {t}/body;
  proxy_temp_path {t}/proxy;
  fastcgi_temp_path {t}/fastcgi;
  uwsgi_temp_path {t}/uwsgi;
  scgi_temp_path {t}/scgi;
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    location ~ ^/sub/(\\w+)$ {{
      nchan_subscriber eventsource;
      nchan_channel_id $1;
      nchan_subscriber_first_message newest;
    }}
    location ~ ^/pub/(\\w+)$ {{
      nchan_publisher;
      nchan_channel_id $1;
      nchan_message_buffer_length 1000;
      nchan_message_timeout 1h;
    }}
  }}
}}
""")
        return ["nginx", "-p", str(t), "-c", str(conf), "-e", str(t / "error.log")]

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.tmp / "error.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return super().log_tail(lines)

    @staticmethod
    def version() -> str:
        nginx = _version(["nginx", "-v"])
        nchan = _version(["dpkg-query", "-W", "-f", "${Version}", "libnginx-mod-nchan"])
        return f"{nginx}, libnginx-mod-nchan {nchan}"


class Naive(Server):
    """BASELINE: FastAPI + sse-starlette + redis.asyncio, one Redis pub/sub connection per subscriber."""

    name = "naive"
    sub_path = "/api/v1/events/stream?channels=bench%d"
    pub_path = "/api/v1/events/publish"
    pub_raw = False
    resumes = False

    def __init__(self, redis: Redis) -> None:
        super().__init__()
        self.redis = redis

    def command(self) -> list[str]:
        return [
            str(NAIVE_PY), "-m", "uvicorn", "naive.app:app", "--app-dir", str(BENCH), "--host", "127.0.0.1",
            "--port", str(self.port), "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
            "--no-access-log", "--backlog", "4096", "--timeout-graceful-shutdown", "2",
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["NAIVE_REDIS_URL"] = self.redis.url
        return env

    def pids(self) -> list[int]:
        return super().pids() + self.redis.pids()

    @staticmethod
    def version() -> str:
        out = subprocess.run(
            [str(NAIVE_PY), "-c", "import fastapi, sse_starlette, redis; print(fastapi.__version__, "
             "sse_starlette.__version__, redis.__version__)"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        parts = out.stdout.split()
        if len(parts) == 3:
            return f"FastAPI {parts[0]}, sse-starlette {parts[1]}, redis-py {parts[2]}"
        return "unknown"


def python_version() -> str:
    return sys.version.split()[0]
