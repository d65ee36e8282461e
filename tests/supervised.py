"""Worker entry points for the supervisor tests (module level: spawn imports them by name)."""

from __future__ import annotations

import socket
import sys

from ssehub.settings import Settings


def crash_at_start(settings: Settings, sock: socket.socket, metrics_dir: str | None, parent_pid: int) -> None:
    """A worker that fails at once, as one with a broken environment would."""
    sys.exit(3)
