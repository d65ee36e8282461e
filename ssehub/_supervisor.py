"""``ssehub serve --workers N``: ssehub's own worker supervisor.

uvicorn's supervisor builds each worker's server itself, so its workers cannot end their streams when shutdown
begins: their streams were cut after uvicorn's timeout. This one is small and does only what ssehub needs:

- the parent binds the listening socket once and starts N worker processes (``multiprocessing`` spawn), each
  running :class:`ssehub._server.HubServer` on the inherited socket with the parent's :class:`Settings` passed
  as an argument (workers read no ``SSEHUB_*`` variable and nothing is written to ``os.environ`` for them);
- SIGTERM and SIGINT stop it: it closes its copy of the listening socket (so no connection waits in a backlog
  nobody accepts from), sends SIGTERM to every worker (SIGTERM also for SIGINT: a second SIGINT would make
  uvicorn skip its graceful wait), waits ``shutdown_grace + EXIT_RESERVE`` seconds and kills what is left;
- a worker that exits on its own is restarted, at most :data:`MAX_RESTARTS` times per :data:`RESTART_WINDOW`
  seconds; past that the supervisor stops everything and exits with status 1 (a crash loop is a configuration
  or environment problem a restart does not fix);
- metrics: it creates the prometheus-client multiprocess directory, gives it to the workers, marks an exited
  worker dead there (its gauges stop counting, its counters stay) and removes the directory at exit.
"""

from __future__ import annotations

import contextlib
import logging
import logging.config
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

from ssehub.logs import logging_config
from ssehub.settings import Settings

logger = logging.getLogger("ssehub.supervisor")

#: The listening socket's accept queue (uvicorn's default is 2,048; the kernel caps it at net.core.somaxconn). A
#: reconnect storm is thousands of connects at once: connections an overflowing queue drops wait for SYN
#: retransmits (1, 3, 7, 15 s...), and some are reset in the end.
LISTEN_BACKLOG = 16384

#: Restarts of exited workers allowed within RESTART_WINDOW seconds before the supervisor gives up.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
#: Seconds, after the grace period, before workers still running are killed (their own watchdog ends them
#: at grace + 2 s; this is the supervisor's backstop).
KILL_AFTER = 3.0

#: A worker process's entry point: (settings, listening socket, metrics directory or None, supervisor pid).
WorkerTarget = Callable[[Settings, socket.socket, str | None, int], None]


def _worker(settings: Settings, sock: socket.socket, metrics_dir: str | None, parent_pid: int) -> None:
    """A worker process: serve on the supervisor's socket with the supervisor's settings."""
    if metrics_dir is not None:
        # prometheus-client chooses its value store from this variable when first imported (below, by the
        # app): the only way to put it in multiprocess mode. It is the library's, not an ssehub setting.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from ssehub._server import serve

    serve(settings, sockets=[sock], parent_pid=parent_pid)


class Supervisor:
    """Runs ``workers`` worker processes on one listening socket until SIGTERM or SIGINT.

    Args:
        settings: the configuration every worker uses.
        workers: how many worker processes.
        target: what a worker process runs, called with (settings, socket, metrics directory, supervisor pid);
            a module-level function (spawn imports it by name).
    """

    def __init__(self, settings: Settings, workers: int, *, target: WorkerTarget | None = None) -> None:
        self.settings = settings
        self.workers = workers
        self._target = target if target is not None else _worker
        self._context = multiprocessing.get_context("spawn")
        self._processes: dict[int, BaseProcess] = {}  # slot -> process
        self._restarts: deque[float] = deque()
        self._stop_signal: int | None = None
        self._wakeup_r, self._wakeup_w = os.pipe()
        self._sock: socket.socket | None = None
        self._metrics_dir: str | None = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stop_signal is None:
            self._stop_signal = signum
        os.write(self._wakeup_w, b"x")  # wakes the wait in run()

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.settings.host, self.settings.port))
        sock.listen(LISTEN_BACKLOG)  # connections queue until a worker accepts, during start-up and restarts too
        sock.set_inheritable(True)
        return sock

    def _start(self, slot: int) -> None:
        assert self._sock is not None
        process = self._context.Process(
            target=self._target,
            args=(self.settings, self._sock, self._metrics_dir, os.getpid()),
            name=f"ssehub-worker-{slot}",
        )
        process.start()
        self._processes[slot] = process
        logger.info("worker %d started (pid %s)", slot, process.pid)

    def _mark_dead(self, pid: int | None) -> None:
        if self._metrics_dir is not None and pid is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self._metrics_dir)  # type: ignore[no-untyped-call]

    def _may_restart(self) -> bool:
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW:
            self._restarts.popleft()
        if len(self._restarts) >= MAX_RESTARTS:
            return False
        self._restarts.append(now)
        return True

    def run(self) -> int:
        """Serve until stopped; return the exit status (0 after a signal, 1 when workers kept failing)."""
        logging.config.dictConfig(logging_config(self.settings))
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        status = 0
        try:
            try:
                self._sock = self._bind()
            except OSError as exc:
                logger.error("cannot listen on %s:%d: %s", self.settings.host, self.settings.port, exc)
                return 1
            if self.settings.metrics != "off":
                self._metrics_dir = tempfile.mkdtemp(prefix="ssehub-metrics-")
            logger.info(
                "supervisor (pid %d) listening on %s:%d with %d workers",
                os.getpid(),
                self.settings.host,
                self._sock.getsockname()[1],
                self.workers,
            )
            for slot in range(self.workers):
                self._start(slot)
            status = self._watch()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
            if self._metrics_dir is not None:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)
        return status

    def _watch(self) -> int:
        """Wait for a signal or a worker's exit; restart exited workers within the bound."""
        while self._stop_signal is None:
            sentinels = {process.sentinel: slot for slot, process in self._processes.items()}
            ready = wait([self._wakeup_r, *sentinels], timeout=5.0)
            if self._stop_signal is not None:
                break
            for handle in ready:
                if handle == self._wakeup_r:
                    os.read(self._wakeup_r, 64)
                    continue
                slot = sentinels[handle]  # type: ignore[index]  # only ints were waited on
                process = self._processes.pop(slot)
                process.join()
                self._mark_dead(process.pid)
                if not self._may_restart():
                    logger.error(
                        "worker %d (pid %s) exited with %s; more than %d restarts in %.0f s: stopping",
                        slot,
                        process.pid,
                        process.exitcode,
                        MAX_RESTARTS,
                        RESTART_WINDOW,
                    )
                    return 1
                logger.warning("worker %d (pid %s) exited with %s; restarting it", slot, process.pid, process.exitcode)
                self._start(slot)
        logger.info("received %s: stopping %d workers", signal.Signals(self._stop_signal).name, len(self._processes))
        return 0

    def _stop_all(self) -> None:
        """Close the listening socket, SIGTERM every worker, wait for them within the bound, kill the rest."""
        if self._sock is not None:
            self._sock.close()  # new connections are refused at once instead of waiting in the backlog
            self._sock = None
        for process in self._processes.values():
            if process.pid is not None and process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace + KILL_AFTER
        for process in self._processes.values():
            process.join(max(0.0, deadline - time.monotonic()))
        for slot, process in self._processes.items():
            if process.exitcode is None:
                logger.error("worker %d (pid %s) did not exit in time; killing it", slot, process.pid)
                process.kill()
                process.join(5.0)
            self._mark_dead(process.pid)
        self._processes.clear()
