"""The public surface: exactly the names meant to be public, sorted, and importable."""

from __future__ import annotations

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
    """Importing ssehub creates no hub, broker, task or event loop."""
    import asyncio
    import gc

    from ssehub import Hub, MemoryBroker

    gc.collect()  # hubs of earlier tests in this session may wait in reference cycles: they are not import state
    assert not [obj for obj in gc.get_objects() if isinstance(obj, Hub | MemoryBroker)]
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:  # pragma: no cover
        raise AssertionError("a loop is running at import")
