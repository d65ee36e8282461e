"""Many concurrent stream readers that record every event and how their stream ended (cleanly or not)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx

from ssehub.testing import SSEMessage, open_stream


@dataclass
class Reader:
    """One client's view of its stream(s): events in order, and how the last stream ended."""

    events: list[SSEMessage] = field(default_factory=list)
    connected: list[SSEMessage] = field(default_factory=list)
    ended_cleanly: bool = False
    error: str | None = None
    #: Set when the stream is open (its ``connected`` event arrived) or failed to open.
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def last_id(self) -> str:
        """The id a browser would send as Last-Event-ID: of the last event, else of the ``connected`` event."""
        return self.events[-1].id if self.events else self.connected[-1].id

    @property
    def ids(self) -> list[str]:
        """Ids of the events received (not ``connected``, heartbeats or resets)."""
        return [message.id for message in self.events]


async def read_stream(
    client: httpx.AsyncClient,
    url: str,
    reader: Reader,
    *,
    last_event_id: str | None = None,
    until: int | None = None,
    timeout: float = 30.0,
) -> None:
    """Read one stream into ``reader`` until the server ends it (or ``until`` events in total were received).

    Sets ``reader.ready`` once the ``connected`` event arrived. A stream cut without its end (a reset, an
    incomplete chunked body) is recorded in ``reader.error``; a clean end sets ``reader.ended_cleanly``.
    """
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else None
    reader.ended_cleanly = False
    reader.ready.clear()
    try:
        async with open_stream(client, url, headers=headers, timeout=timeout) as stream:
            assert stream.response.status_code == 200, stream.response.status_code
            first = await stream.next_event()
            assert first.event == "connected", first
            reader.connected.append(first)
            reader.ready.set()
            while until is None or len(reader.events) < until:
                try:
                    message = await stream.next_event(timeout)
                except EOFError:
                    reader.ended_cleanly = True
                    return
                if message.event != "heartbeat":
                    reader.events.append(message)
    except (httpx.HTTPError, TimeoutError, AssertionError) as exc:
        reader.error = f"{type(exc).__name__}: {exc}"
    finally:
        reader.ready.set()


async def wait_ready(readers: list[Reader], timeout: float = 30.0) -> None:
    """Wait (bounded) until every reader's stream is open or has failed; fail on the first error."""
    async with asyncio.timeout(timeout):
        for reader in readers:
            await reader.ready.wait()
    errors = [reader.error for reader in readers if reader.error]
    assert not errors, errors[:3]
