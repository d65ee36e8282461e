"""A real Redis Cluster for tests: ``redis-server --cluster-enabled yes`` nodes on free loopback ports.

``LocalCluster(masters=3, replicas=1)`` spawns the nodes (config files in a temp dir, no persistence), joins
them with ``redis-cli --cluster create ... --cluster-yes`` and waits for ``cluster_state:ok``. Nodes are
killed by PID (a crashed master, for failover tests); ``close`` ends every process it started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tests.redis_server import REDIS_SERVER, free_port

if TYPE_CHECKING:
    from tests.deploy.proxies import TLSFiles

REDIS_CLI = shutil.which("redis-cli")
SKIP_REASON = "redis-server and redis-cli are needed (make test installs them; apt-get install redis-server)"


def _tls_args(tls: TLSFiles | None) -> list[str]:
    """redis-cli's options for a TLS node (none for plain TCP)."""
    return ["--tls", "--cacert", str(tls.ca)] if tls is not None else []


def _command(port: int, *args: str, timeout: float = 2.0, tls: TLSFiles | None = None) -> str:
    """Run one command on a node with redis-cli and return its output ('' if the node does not answer)."""
    assert REDIS_CLI is not None
    try:
        done = subprocess.run(
            [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *_tls_args(tls), *args],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout.decode(errors="replace")


@dataclass
class ClusterNode:
    """One cluster node process."""

    port: int
    dir: Path
    node_timeout_ms: int
    bus_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    tls: TLSFiles | None = None  # serve TLS only (clients and the cluster bus), on ``port``

    def __post_init__(self) -> None:
        if not self.bus_port:
            self.bus_port = free_port()

    def start(self) -> None:
        """Spawn the node (cluster mode, no persistence) and wait until it answers PING."""
        assert REDIS_SERVER is not None
        self.dir.mkdir(parents=True, exist_ok=True)
        log = (self.dir / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                *self._listen_args(),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                # An explicit bus port: the default (port + 10000) may be taken or out of range.
                "--cluster-port",
                str(self.bus_port),
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_tail()}")
            if self.info("PING").strip() == "PONG":
                return
            time.sleep(0.02)
        raise RuntimeError(f"cluster node on port {self.port} did not start")

    def _listen_args(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        files = self.tls
        return [
            *("--port", "0", "--tls-port", str(self.port), "--tls-cluster", "yes", "--tls-auth-clients", "no"),
            *("--tls-cert-file", str(files.certificate), "--tls-key-file", str(files.key)),
            *("--tls-ca-cert-file", str(files.ca)),
        ]

    @property
    def alive(self) -> bool:
        """Whether the process runs."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the process (a crash) and reap it, by PID."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def log_tail(self) -> str:
        """The end of the node's log."""
        path = self.dir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def info(self, *args: str) -> str:
        """A command's output from this node."""
        return _command(self.port, *args, tls=self.tls)


class LocalCluster:
    """A cluster of ``masters`` masters with ``replicas`` replicas each, on free loopback ports.

    Args:
        node_timeout_ms: ``cluster-node-timeout``; short in failover tests so a replica takes over fast.
        tls: serve TLS only, with this certificate (its CA in the URL).
    """

    def __init__(
        self, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 5000, tls: TLSFiles | None = None
    ) -> None:
        if REDIS_SERVER is None or REDIS_CLI is None:
            raise RuntimeError(SKIP_REASON)
        self.root = Path(tempfile.mkdtemp(prefix="ssehub-cluster-"))
        self.masters = masters
        self.replicas = replicas
        self.tls = tls
        self.nodes = [
            ClusterNode(port, self.root / str(port), node_timeout_ms, tls=tls)
            for port in (free_port() for _ in range(masters * (1 + replicas)))
        ]

    @property
    def url(self) -> str:
        """``redis+cluster://`` (``rediss+cluster://`` with the CA) with every node as a seed."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        if self.tls is not None:
            return f"rediss+cluster://{hosts}?ssl_ca_certs={self.tls.ca}"
        return f"redis+cluster://{hosts}"

    def start(self, timeout: float = 60.0) -> None:
        """Spawn the nodes, create the cluster and wait until every node reports ``cluster_state:ok``."""
        assert REDIS_CLI is not None
        for node in self.nodes:
            node.start()
        created = subprocess.run(
            [
                REDIS_CLI,
                *_tls_args(self.tls),
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout.decode()[-2000:]}")
        self.wait_ok(timeout)
        if self.replicas:
            self.wait_replicas(timeout)

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Wait until every live node says ``cluster_state:ok`` and the slots are covered by live masters."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [node for node in self.nodes if node.alive]
            if all("cluster_state:ok" in node.info("CLUSTER", "INFO") for node in live) and len(
                self.master_ports()
            ) >= min(self.masters, len(live)):
                return
            time.sleep(0.1)
        raise RuntimeError("the cluster did not reach cluster_state:ok: " + self.nodes[0].info("CLUSTER", "NODES"))

    def wait_replicas(self, timeout: float = 60.0) -> None:
        """Wait until every master has a replica in sync (``master_link_status:up`` on each replica)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            replicas = [node for node in self.nodes if node.alive and "role:slave" in node.info("INFO", "replication")]
            if len(replicas) == self.masters * self.replicas and all(
                "master_link_status:up" in node.info("INFO", "replication") for node in replicas
            ):
                return
            time.sleep(0.1)
        raise RuntimeError("replicas did not sync: " + self.nodes[0].info("CLUSTER", "NODES"))

    def master_ports(self) -> list[int]:
        """Ports of the live masters that serve slots, as a live node sees them."""
        for node in self.nodes:
            if not node.alive:
                continue
            ports = []
            for line in node.info("CLUSTER", "NODES").splitlines():
                fields = line.split()
                if len(fields) >= 9 and "master" in fields[2] and "fail" not in fields[2] and fields[8:]:
                    ports.append(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
            return sorted(ports)
        return []

    def master_of_slot(self, slot: int) -> int:
        """The port of the live master serving ``slot`` (as a live node sees it), or 0 if none does."""
        for node in self.nodes:
            if not node.alive:
                continue
            for line in node.info("CLUSTER", "NODES").splitlines():
                fields = line.split()
                if len(fields) < 9 or "master" not in fields[2] or "fail" in fields[2]:
                    continue
                for item in fields[8:]:
                    low, _, high = item.partition("-")
                    if low.isdigit() and int(low) <= slot <= int(high or low):
                        return int(fields[1].split("@")[0].rsplit(":", 1)[1])
            return 0
        return 0

    def migrate_slot(self, slot: int, to_port: int) -> None:
        """Move ``slot`` and its keys to the master on ``to_port``, the way ``redis-cli --cluster reshard`` does."""
        source = self.node(self.master_of_slot(slot))
        target = self.node(to_port)
        source_id = source.info("CLUSTER", "MYID").strip()
        target_id = target.info("CLUSTER", "MYID").strip()
        assert target.info("CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id).strip() == "OK"
        assert source.info("CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id).strip() == "OK"
        while keys := source.info("CLUSTER", "GETKEYSINSLOT", str(slot), "100").split():
            moved = source.info("MIGRATE", "127.0.0.1", str(to_port), "", "0", "5000", "KEYS", *keys)
            assert moved.strip() == "OK", moved
        for node in self.nodes:
            if node.alive and "role:master" in node.info("INFO", "replication"):
                node.info("CLUSTER", "SETSLOT", str(slot), "NODE", target_id)
        deadline = time.monotonic() + 30
        while self.master_of_slot(slot) != to_port and time.monotonic() < deadline:
            time.sleep(0.1)

    def node(self, port: int) -> ClusterNode:
        """The node listening on ``port``."""
        return next(node for node in self.nodes if node.port == port)

    def close(self) -> None:
        """Kill every node and remove the directory."""
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def local_cluster(
    masters: int = 3, replicas: int = 0, node_timeout_ms: int = 5000, tls: TLSFiles | None = None
) -> Iterator[LocalCluster]:
    """A started LocalCluster, closed on exit."""
    cluster = LocalCluster(masters, replicas, node_timeout_ms, tls)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
