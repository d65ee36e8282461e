"""The hub: one per process. It owns the broker, indexes local subscriptions and fans events out to them.

Flow of one event: a publisher calls :meth:`Hub.publish` (or a publisher elsewhere writes to the shared
broker); the broker stores it, gives it an id and hands it to :meth:`Hub._on_event`, once, whatever the
number of connections. The hub looks up the subscriptions of the event's channel (and, for filtered ones,
of the event's filter value) and pushes the event's SSE bytes, encoded once, to each connection.

Resume without loss or duplicates: a new subscription is indexed *before* its history is read, in a
catching-up state that holds live events aside. History is then read up to the broker's head; it is
written first, then the held live events newer than the head. The same code covers a fresh subscription
(it starts at the head and tells the client that id in its ``connected`` event, so even a client that saw no
event resumes exactly) and a reset (the client's id is older than what the broker retains).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ssehub._types import Scope, Send
from ssehub._uvicorn import chunk
from ssehub.auth import Authenticator
from ssehub.brokers import Broker, create_broker
from ssehub.connection import Connection, select_writer
from ssehub.encoder import encode
from ssehub.events import Event, Position, dump_json, validate_channel, validate_event_type
from ssehub.exceptions import (
    ConnectionLimitError,
    HubNotRunningError,
    InvalidEventIdError,
    InvalidValueError,
    UnknownChannelError,
)
from ssehub.expiry import EarlyDeadlines, token_deadline
from ssehub.flusher import Flusher
from ssehub.settings import Settings
from ssehub.stats import HubStats, OpenMode
from ssehub.subscription import MISSING, ChannelIndex, Subscription, filter_key, validate_filters

if TYPE_CHECKING:
    from ssehub.grants import Grant
    from ssehub.writer import Writer

logger = logging.getLogger("ssehub.hub")


class Hub:
    """Channels, subscriptions and fan-out for one process. Use it as an async context manager.

    Args:
        settings: configuration; read from the environment when omitted.
        broker: the broker to use; built from ``settings.broker_url`` when omitted.

    Attributes:
        stats: the hub's counters (:class:`ssehub.stats.HubStats`), read by ``/metrics``.
    """

    def __init__(self, settings: Settings | None = None, *, broker: Broker | None = None) -> None:
        self.settings = settings if settings is not None else Settings()
        self.broker = broker if broker is not None else create_broker(self.settings)
        self._index: dict[str, ChannelIndex] = {}
        self._connections: dict[Connection, None] = {}
        self._active = 0
        self._broker_channels: set[str] = set()
        self._to_release: set[str] = set()
        self._sync_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = HubStats(self._connections)
        self._flusher = Flusher(self.stats.observe_flush)
        self._running = False
        patterns = self.settings.channels
        self._allow_all = "*" in patterns
        self._patterns = [re.compile(fnmatch.translate(p)) for p in patterns]
        #: Credentials and grants (ssehub/auth.py); the stream and publish endpoints ask it once per request.
        self.auth = Authenticator(self.settings)
        self._early = EarlyDeadlines()

    # -- lifetime -------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Hub:
        self.auth.announce()
        self.broker.accept_batches(self._on_events)
        await self.broker.start(self._on_event, self._on_gap)
        self._running = True
        self._spawn(self._heartbeat_loop(), "ssehub-heartbeat")
        self._spawn(self._timeout_loop(), "ssehub-timeouts")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def end_streams(self) -> None:
        """End every open stream cleanly and refuse new ones: clients reconnect (elsewhere, or later) and resume.

        Call it when the server starts shutting down, before it waits for requests to finish.
        """
        self._running = False
        for connection in list(self._connections):
            connection.close("shutdown")

    async def close(self) -> None:
        """End every stream and stop the broker."""
        if not self._tasks and not self._running:
            return
        self.end_streams()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.broker.stop()

    @property
    def running(self) -> bool:
        """Whether the hub is started and not closing."""
        return self._running

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- channels -------------------------------------------------------------------------------------------

    def check_channel(self, name: str) -> str:
        """Return ``name`` if it is well formed and allowed by ``settings.channels``.

        Raises:
            InvalidValueError: malformed.
            UnknownChannelError: well formed but not allowed.
        """
        validate_channel(name)
        if not self._allow_all and not any(p.fullmatch(name) for p in self._patterns):
            raise UnknownChannelError(
                f"unknown channel {name!r}: allowed channels match {', '.join(self.settings.channels)}"
            )
        return name

    # -- publishing -----------------------------------------------------------------------------------------

    async def publish(self, channel: str, event: str, data: Any) -> Event:
        """Publish ``data`` (any JSON value) as ``event`` on ``channel``; return the stored event.

        Raises:
            InvalidValueError: a bad channel, event type or data (UnknownChannelError: not allowed).
            BrokerUnavailableError: the broker cannot be reached; nothing was published.
            ChannelLimitError: the broker keeps as many channels as it may.
            HubNotRunningError: the hub is not started.
        """
        self.check_channel(channel)
        validate_event_type(event)
        text = dump_json(data)
        if len(text.encode("utf-8")) > self.settings.max_payload_bytes:
            raise InvalidValueError(f"data is larger than {self.settings.max_payload_bytes} bytes", "PAYLOAD_TOO_LARGE")
        if not self._running:
            raise HubNotRunningError("the hub is not running")
        published = await self.broker.publish(channel, event, text)
        self.stats.published += 1
        return published

    # -- fan-out --------------------------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        """The broker's callback: hand the event's bytes to every matching subscription. Never awaits."""
        stats = self.stats
        stats.received += 1
        index = self._index.get(event.channel)
        if index is None:
            return
        if index.live:
            stats.delivered += len(index.live)
            frame = event.frame
            framed = event.chunk
            for connection in index.live:
                connection.push(frame, framed)
        if index.catching:
            stats.delivered += len(index.catching)
            for sub in index.catching:
                sub.hold(event)
        if index.by_field:
            stats.delivered += self._fan_out_filtered(index, event)
        self._flusher.note(event.id.ms)

    def _on_events(self, events: Sequence[Event]) -> None:
        """The broker's batch callback: ``_on_event`` for each event, in order, except that a run of one
        channel's events reaches each caught-up unfiltered connection in ONE push (one buffer entry, one
        bounds check) instead of one per event. Never awaits."""
        stats = self.stats
        stats.received += len(events)
        count = len(events)
        start = 0
        while start < count:
            channel = events[start].channel
            end = start + 1
            while end < count and events[end].channel == channel:
                end += 1
            run = events[start:end]
            start = end
            index = self._index.get(channel)
            if index is None:
                continue
            if index.live:
                stats.delivered += len(index.live) * len(run)
                frames = b"".join([event.frame for event in run])
                chunks = b"".join([event.chunk for event in run])
                for connection in index.live:
                    connection.push(frames, chunks)
            if index.catching:
                stats.delivered += len(index.catching) * len(run)
                for sub in index.catching:
                    for event in run:
                        sub.hold(event)
            if index.by_field:
                for event in run:
                    stats.delivered += self._fan_out_filtered(index, event)
            self._flusher.note(run[0].id.ms)

    @staticmethod
    def _fan_out_filtered(index: ChannelIndex, event: Event) -> int:
        """Hand ``event`` to the filtered subscriptions it matches; return how many."""
        delivered = 0
        fields = event.fields
        for name, by_value in index.by_field.items():
            key = filter_key(fields.get(name, MISSING))
            subs = by_value.get(key) if key is not None else None
            if subs:
                delivered += len(subs)
                for sub in subs:
                    if sub.rest is None or sub.accepts(fields):
                        sub.hold(event)
                    else:
                        delivered -= 1  # only rejected ones pay: counted per event, not per delivery
        return delivered

    def _on_gap(self, channels: Sequence[str]) -> None:
        """The broker lost live events of ``channels`` that history no longer holds: end those streams.

        Their clients reconnect with their last id, which is then older than the history: they get a reset.
        """
        logger.warning("live delivery lost events on %s; ending their streams so clients resync", list(channels))
        self.stats.gaps += len(channels)
        for name in channels:
            index = self._index.get(name)
            if index is None:
                continue
            for sub in index.subscriptions():
                sub.connection.close("resync")

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            frame = encode(dump_json({"time": round(time.time(), 3)}), event="heartbeat")
            framed = chunk(frame)
            for connection in self._connections:
                connection.push(frame, framed)

    async def _timeout_loop(self) -> None:
        """End streams older than connection_timeout. Connections are kept in the order they joined
        ``_connections`` (after their catch-up), and each one's deadline is set when it joins, from the one
        shared timeout: so deadlines are in order, and only the oldest need looking at. No timer per stream."""
        loop = asyncio.get_running_loop()
        period = min(1.0, self.settings.connection_timeout / 4)
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            expired = []
            for connection in self._connections:
                if connection.deadline > now:
                    break
                expired.append(connection)
            for connection in expired:
                connection.close("timeout")
            # Streams whose token expires before the shared timeout (a small heap, see ssehub/expiry.py): tell
            # the client why, then end cleanly; it comes back with a fresh token and resumes.
            for connection in self._early.due(now):
                if connection in self._connections and not connection.closed:
                    connection.push(encode(dump_json({"reason": "token_expired"}), event="token_expired"))
                    connection.close("expired")

    # -- subscribing ----------------------------------------------------------------------------------------

    def _parse_resume_id(self, last_event_id: str | None) -> Position | str | None:
        if last_event_id is None or last_event_id == "":
            return None
        try:
            return self.broker.parse_position(last_event_id)
        except InvalidEventIdError:
            return "invalid"

    @contextlib.asynccontextmanager
    async def subscribe(
        self,
        channels: Sequence[str],
        *,
        filters: Mapping[str, str] | None = None,
        last_event_id: str | None = None,
        send: Send | None = None,
        scope: Scope | None = None,
        grant: Grant | None = None,
    ) -> AsyncIterator[Subscription]:
        """:meth:`open` a subscription and :meth:`release` it on exit.

        Raises:
            The errors of :meth:`open`.
        """
        sub = await self.open(
            channels, filters=filters, last_event_id=last_event_id, send=send, scope=scope, grant=grant
        )
        try:
            yield sub
        finally:
            self.release(sub)

    async def open(
        self,
        channels: Sequence[str],
        *,
        filters: Mapping[str, str] | None = None,
        last_event_id: str | None = None,
        send: Send | None = None,
        scope: Scope | None = None,
        grant: Grant | None = None,
        writer: Writer | None = None,
    ) -> Subscription:
        """Open a subscription; run :meth:`Subscription.stream` once the response has started; always
        :meth:`release` it (the stream endpoint holds no context manager: one frame less per open stream).

        When this returns, the connection holds ``retry`` with a ``connected`` event, and a ``reset`` event if
        the id is older than the retained history or not an id this hub issued (the documented fallback for a
        malformed Last-Event-ID); the missed events, if any, are in ``backlog`` for ``stream`` to write.
        Broker errors therefore happen here, before any response starts (nothing is left held then).
        ``grant`` (checked by the caller, :meth:`Authenticator.stream_grant`) is carried by the subscription;
        a stream whose grant expires ends then (close reason ``expired``). ``writer`` imposes how the stream is
        written (a server's own stream path); otherwise ``send`` and ``scope`` choose it.

        Raises:
            InvalidValueError: bad channels or filters (UnknownChannelError: not allowed).
            ConnectionLimitError: ``max_connections`` streams are open.
            HubNotRunningError: the hub is not started.
            BrokerUnavailableError: the broker cannot be reached.
        """
        unique = tuple(dict.fromkeys(channels))
        if not unique:
            raise InvalidValueError("a stream needs at least one channel", "INVALID_CHANNEL")
        if len(unique) > self.settings.max_channels_per_stream:
            raise InvalidValueError(
                f"at most {self.settings.max_channels_per_stream} channels per stream, got {len(unique)}",
                "TOO_MANY_CHANNELS",
            )
        for name in unique:
            self.check_channel(name)
        checked_filters = validate_filters(filters or {})
        if not self._running:
            raise HubNotRunningError("the hub is not running")
        if self._active >= self.settings.max_connections:
            raise ConnectionLimitError(f"the hub already serves {self.settings.max_connections} streams")
        resume_from = self._parse_resume_id(last_event_id)

        self._active += 1
        if writer is None and send is not None:
            writer = select_writer(send, scope or {}, fast_path=self.settings.fast_path)
        connection = Connection(secrets.token_hex(8), self.settings.max_buffer_bytes, self._flusher.ready, 0.0, writer)
        sub = Subscription(unique, checked_filters, connection, self._promote)
        sub.grant = grant
        for name in unique:
            index = self._index.get(name)
            if index is None:
                index = self._index[name] = ChannelIndex()
            index.add(sub)
        try:
            await self._acquire_broker_channels(unique)
            mode = await self._catch_up(sub, resume_from, last_event_id)
        except BaseException:
            self.release(sub)
            raise
        # The deadline counts from here, so that _connections stays in deadline order (see _timeout_loop).
        now = asyncio.get_running_loop().time()
        connection.deadline = now + self.settings.connection_timeout
        self._connections[connection] = None
        early = token_deadline(grant, now, connection.deadline)
        if early is not None:
            self._early.add(early, connection)
        if not self._running:
            connection.close("shutdown")  # shutdown began during the catch-up: end_streams did not see it
        self.stats.stream_opened(sub, scope, mode)
        return sub

    def _promote(self, sub: Subscription) -> None:
        """A subscription caught up: its channels deliver to its connection directly from now on."""
        for name in sub.channels:
            index = self._index.get(name)
            if index is not None:
                index.promote(sub)

    def release(self, sub: Subscription) -> None:
        """Release everything a subscription holds: its index entries, its count, idle broker channels."""
        connection = sub.connection
        self._connections.pop(connection, None)
        connection.close("shutdown")
        self.stats.stream_closed(sub)
        for name in sub.channels:
            index = self._index[name]
            index.remove(sub)
            if not index.count:
                del self._index[name]
                self._to_release.add(name)
        self._active -= 1
        if self._to_release and self._running:
            self._spawn(self._release_broker_channels(), "ssehub-release")

    async def _acquire_broker_channels(self, channels: Sequence[str]) -> None:
        # Serialized with releases so that the broker never sees subscribe and unsubscribe of one channel race.
        broker_channels = self._broker_channels
        if not self._sync_lock.locked() and all(name in broker_channels for name in channels):
            # The common open: its channels are subscribed and no release is running (one would hold the lock);
            # a release still to come sees them in the index again and keeps them.
            self._to_release.difference_update(channels)
            return
        async with self._sync_lock:
            for name in channels:
                self._to_release.discard(name)
                if name not in self._broker_channels:
                    await self.broker.subscribe(name)
                    self._broker_channels.add(name)

    async def _release_broker_channels(self) -> None:
        async with self._sync_lock:
            while self._to_release:
                name = self._to_release.pop()
                if name not in self._index and name in self._broker_channels:
                    self._broker_channels.discard(name)
                    await self.broker.unsubscribe(name)

    async def _catch_up(self, sub: Subscription, resume_from: Position | str | None, raw_id: str | None) -> OpenMode:
        """Queue the opening frames; read what the client missed into ``sub.backlog`` (written by ``stream``).

        Returns how the stream starts: ``new``, ``resumed`` or ``reset``.
        """
        connection = sub.connection
        settings = self.settings
        info: dict[str, Any] = {
            "connection_id": connection.id,
            "channels": list(sub.channels),
            "heartbeat_interval": settings.heartbeat_interval,
        }
        cutoff: Position
        if resume_from is not None and not isinstance(resume_from, str):
            history = await self.broker.read_after(
                sub.channels, resume_from, limit=settings.history_size * len(sub.channels)
            )
            cutoff = history.cutoff
            info["resumed"] = not history.expired
            connection.push(encode(dump_json(info), event="connected", id=str(resume_from), retry=settings.retry_ms))
            mode: OpenMode = "reset" if history.expired else "resumed"
            if history.expired:
                self._push_reset(sub, "history_expired", history.expired, cutoff)
            else:
                # Replay only what this stream may read: its own (authorized) channels, then its filters. The
                # broker reads exactly these channels; the check keeps a resume from ever leaking another.
                channels = frozenset(sub.channels)
                sub.backlog = [
                    event
                    for event in history.events
                    if event.channel in channels and (not sub.filters or sub.accepts(event.fields))
                ]
        else:
            cutoff = await self.broker.position()
            info["resumed"] = False
            mode = "new" if resume_from is None else "reset"
            if resume_from is None:
                connection.push(encode(dump_json(info), event="connected", id=str(cutoff), retry=settings.retry_ms))
            else:
                # A Last-Event-ID that is not an ssehub id: documented fallback, a reset from the current head.
                logger.info("connection %s: malformed Last-Event-ID %r, sending reset", connection.id, raw_id)
                connection.push(encode(dump_json(info), event="connected", retry=settings.retry_ms))
                self._push_reset(sub, "invalid_last_event_id", list(sub.channels), cutoff)
        sub.cutoff = cutoff
        if mode == "resumed":
            self.stats.resumes += 1
            self.stats.replayed += len(sub.backlog)
        return mode

    def _push_reset(self, sub: Subscription, reason: str, channels: list[str], head: Position) -> None:
        data = dump_json({"reason": reason, "channels": channels})
        self.stats.count_reset(reason)
        sub.connection.push(encode(data, event="reset", id=str(head)))

    # -- introspection --------------------------------------------------------------------------------------

    @property
    def active_connections(self) -> int:
        """Streams open or opening."""
        return self._active

    def subscribers_per_channel(self) -> dict[str, int]:
        """Local subscriptions per channel."""
        return {name: index.count for name, index in sorted(self._index.items())}

    def health(self) -> dict[str, Any]:
        """What ``GET /health`` answers."""
        status = self.broker.status()
        return {
            "status": "ok" if self._running and status.connected else "degraded",
            "enabled": self.settings.enable_sse,
            "active_connections": self._active,
            "max_connections": self.settings.max_connections,
            "heartbeat_interval": self.settings.heartbeat_interval,
            "connection_timeout": self.settings.connection_timeout,
            "channels": self.subscribers_per_channel(),
            "broker": {"name": status.name, "connected": status.connected, **status.details},
        }
