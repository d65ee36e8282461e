"""The public surface: exactly the names meant to be public, sorted, and importable."""

from __future__ import annotations

import subprocess
import sys

import ssehub


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted and every public attribute of the package is in it (nothing exposed by accident)."""
    assert ssehub.__all__ == sorted(ssehub.__all__)
    public = {
        name
        for name in dir(ssehub)
        if not name.startswith("_")
        and not isinstance(getattr(ssehub, name), type(ssehub))  # submodules are reachable, not re-exported
    }
    assert public | {"__version__"} == set(ssehub.__all__)
    for name in ssehub.__all__:
        assert getattr(ssehub, name) is not None


def test_no_state_at_import() -> None:
    """Importing ssehub creates no hub, broker, task, thread or event loop (checked in a fresh interpreter).

    A fresh interpreter, because garbage left by earlier tests (cycles not yet collected) would say nothing
    about import time.
    """
    code = """
import asyncio, gc, threading
import ssehub, ssehub.app, ssehub.cli
from ssehub import Hub, MemoryBroker
assert not [obj for obj in gc.get_objects() if isinstance(obj, Hub | MemoryBroker)], "a hub or broker exists"
assert threading.active_count() == 1, threading.enumerate()
try:
    asyncio.get_running_loop()
except RuntimeError:
    pass
else:
    raise AssertionError("a loop is running at import")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
