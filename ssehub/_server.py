"""The uvicorn server of ``ssehub serve``, in one process or in each worker: graceful, bounded shutdown.

On SIGTERM (or SIGINT) uvicorn stops accepting connections and waits for requests to finish, but streams never
finish on their own. :class:`HubServer` therefore ends every stream first (``Hub.end_streams``): the hub refuses
new streams (503 ``HUB_NOT_RUNNING`` with ``Retry-After``), each open stream writes what is queued and ends its
response cleanly, and clients reconnect (to another node, or to this one when it is back) and resume with their
Last-Event-ID. uvicorn waits at most ``shutdown_grace`` seconds for that (then cancels what is left), and a
watchdog thread ends the process :data:`EXIT_RESERVE` seconds later whatever still runs (a broker that does not
close, a task that does not stop), so a shutdown never hangs. Nothing of uvicorn is patched: this is a subclass
that extends two of its hooks.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

import uvicorn

from ssehub._supervisor import LISTEN_BACKLOG
from ssehub.app import create_app
from ssehub.guard import uvicorn_options
from ssehub.hub import Hub
from ssehub.logs import logging_config
from ssehub.settings import Settings

logger = logging.getLogger("ssehub.server")

#: Seconds a process may take, after the grace period, to stop its broker and exit before it is ended.
EXIT_RESERVE = 2.0


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    """uvicorn's configuration for ``app`` from ssehub's settings (one place for both modes)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=logging_config(settings),
        log_level=settings.log_level,
        # uvicorn builds each access-log line's arguments before the level check: below INFO, not at all.
        access_log=settings.log_level in ("debug", "info"),
        backlog=LISTEN_BACKLOG,  # for reconnect storms
        timeout_graceful_shutdown=settings.shutdown_grace,  # type: ignore[arg-type]  # a float works; typed int
        # Head timeout and size, lingering close, and proxy trust from SSEHUB_TRUSTED_PROXIES.
        **uvicorn_options(settings),
    )


class HubServer(uvicorn.Server):
    """A uvicorn server that ends the hub's streams when shutdown begins and never takes longer than
    ``shutdown_grace + EXIT_RESERVE`` seconds to exit.

    Args:
        config: uvicorn's configuration.
        hub: the hub the app serves.
        parent_pid: in a worker, the supervisor's pid: the worker shuts down if its parent disappears.
        exit_watchdog: end the process if shutdown overruns its bound (off only where the server shares its
            process with something that must outlive it, such as a test run).
    """

    def __init__(
        self, config: uvicorn.Config, hub: Hub, parent_pid: int | None = None, *, exit_watchdog: bool = True
    ) -> None:
        super().__init__(config)
        self.hub = hub
        self._parent_pid = parent_pid
        self._exit_watchdog = exit_watchdog
        self._watchdog: threading.Timer | None = None

    async def on_tick(self, counter: int) -> bool:
        # Once a second: a worker whose supervisor died (SIGKILL) must not serve on alone.
        if self._parent_pid is not None and counter % 10 == 0 and os.getppid() != self._parent_pid:
            logger.warning("the supervisor (pid %d) is gone; shutting down", self._parent_pid)
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        grace = self.hub.settings.shutdown_grace
        self._arm_watchdog(grace + EXIT_RESERVE)
        logger.info("shutting down: ending %d streams (grace %.1f s)", self.hub.active_connections, grace)
        # Ends streams and refuses new ones before uvicorn waits for requests to finish.
        self.hub.end_streams()
        await super().shutdown(sockets)

    def _arm_watchdog(self, delay: float) -> None:
        if self._exit_watchdog and self._watchdog is None:
            self._watchdog = threading.Timer(delay, _force_exit, args=(delay,))
            self._watchdog.daemon = True
            self._watchdog.start()

    def disarm(self) -> None:
        """Stop the watchdog (the server has exited)."""
        if self._watchdog is not None:
            self._watchdog.cancel()


def _force_exit(delay: float) -> None:
    """The watchdog: the process did not exit within the bound. Logged, then ended at once (no cleanup runs)."""
    logger.error("shutdown took longer than %.1f s; exiting now", delay)
    for handler in logging.getLogger("ssehub").handlers:
        handler.flush()
    os._exit(1)


def serve(settings: Settings, *, sockets: list[socket.socket] | None = None, parent_pid: int | None = None) -> None:
    """Serve ssehub with ``settings`` until SIGTERM or SIGINT (on ``sockets`` when given: a worker).

    Args:
        settings: the configuration (in a worker: the supervisor's, passed as an argument).
        sockets: listening sockets bound by the supervisor; ``None`` binds ``settings.host:settings.port``.
        parent_pid: the supervisor's pid, in a worker.
    """
    app = create_app(settings)
    server = HubServer(uvicorn_config(app, settings), app.hub, parent_pid)
    try:
        server.run(sockets=sockets)
    finally:
        server.disarm()
