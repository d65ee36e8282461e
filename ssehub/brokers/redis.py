"""The Redis broker: history in Redis Streams, live delivery over pub/sub, shared by any number of hubs.

Every publish runs ``lua/publish.lua``, which issues the next id of one global sequence (kept in one key),
adds the event to the channel's stream, trims it and PUBLISHes a notification, all in one atomic step: a
subscriber never sees an event that history lacks, nor the reverse, and notifications leave Redis in id
order. The key layout and the script contract are in ``docs/redis-layout.md``.

Publishes are batched without weakening either guarantee: every :meth:`RedisBroker.publish` made during one
event-loop iteration goes to Redis in one ``publish_batch.lua`` call (one round trip), which stores and
notifies each event exactly as ``publish.lua`` would, in order, and reports each event's own outcome. The
reader likewise takes every notification already received at once and hands a run of one channel's events
to the hub in one call, so the hub queues them on each connection in one step. Identical history reads (and
``head`` calls) asked for during one iteration share one call, and read events are kept by id for later
reads: a reconnect storm, where thousands of clients resume from the same id, costs a few reads.

Each process holds one pub/sub connection, whatever the number of streams it serves, plus a small pool for
commands. When the pub/sub connection drops, the reader reconnects with backoff and jitter, subscribes
again, and reads from history every event after the last one it delivered before going live again; a
notification that history already delivered is dropped by id. So the hub sees each event once, in order.
If the outage outlasted the retention, the events trimmed meanwhile are gone: the reader passes those
channels to the hub's ``on_gap`` callback, which ends their streams so that their clients resume and reset.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ssehub.brokers._coalesce import Coalescer, Pending, fail
from ssehub.brokers._redis_layout import (
    CHANNEL_LIMIT_MARKER,
    DEFAULT_PREFIX,
    MAX_BATCH,
    PUBSUB_TYPES,
    PublishOptions,
    PublishScript,
    RedisLayout,
    batch_outcomes,
    events_from_entries,
    load_script,
    parse_notification,
    translate_error,
)
from ssehub.brokers.base import Broker, BrokerStatus, DeliverCallback, DeliverManyCallback, GapCallback, History
from ssehub.brokers.redis_client import ClientOptions, RedisTarget, connect_async, parse_redis_url, require_redis
from ssehub.events import Event, EventId, validate_channel, validate_event_type
from ssehub.exceptions import BrokerUnavailableError, SSEHubError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub
    from redis.commands.core import AsyncScript

    from ssehub.settings import Settings

__all__ = ["DEFAULT_PREFIX", "PublishScript", "RedisBroker"]

logger = logging.getLogger("ssehub.brokers.redis")

#: Events read per page when catching up after a reconnect.
_CATCH_UP_PAGE = 1000
#: Seconds before the first reconnection attempt; doubled per failure up to ``reconnect_max_delay``.
_FIRST_DELAY = 0.05
#: Above every id: a channel's catch-up start while its subscription is being set up (see ``subscribe``).
_NEVER = EventId(2**63 - 1, 2**63 - 1)
#: Events read from history kept by (channel, id), so that many reads of one history (a reconnect storm: every
#: client resumes from the same id) parse and encode each event once, not once per read.
_RECENT_EVENTS = 4096
#: Notifications the reader takes at once before handing them over (bounds the time between two hand-overs).
_READ_BATCH = 1000


class RedisBroker(Broker):
    """A broker on Redis (>= 7.0), for several processes and nodes. Needs ``pip install 'ssehub[redis]'``.

    Args:
        url: ``redis://``, ``rediss://`` or ``redis+sentinel://host:port[,host:port]/service[/db]``.
        prefix: what every key starts with (inside a ``{...}`` hash tag); hubs and publishers sharing
            channels must use the same prefix and the same retention settings.
        history_size: events kept per channel (exact MAXLEN trimming).
        history_ttl: seconds an event is kept.
        max_channels: channels with history kept at once; a new one beyond raises ChannelLimitError.
        pool_size: command connections (the pub/sub connection comes on top).
        socket_timeout: seconds any Redis call may take.
        connect_timeout: seconds a connection attempt may take.
        reconnect_max_delay: longest pause between reconnection attempts of the pub/sub reader.
        ping_interval: seconds of silence on the pub/sub connection before it is probed with PING.

    Raises:
        MissingDependencyError: redis-py is not installed.
        InvalidValueError: a bad URL, prefix or retention value.
    """

    shared_across_processes = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        history_size: int = 1000,
        history_ttl: float = 3600.0,
        max_channels: int = 10000,
        pool_size: int = 8,
        socket_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        reconnect_max_delay: float = 5.0,
        ping_interval: float = 5.0,
    ) -> None:
        require_redis()
        self._target: RedisTarget = parse_redis_url(url)
        self._publishing = PublishScript(prefix, history_size, history_ttl, max_channels)
        self._layout: RedisLayout = self._publishing.layout
        self._options: PublishOptions = self._publishing.options
        self._pool_size = pool_size
        self._socket_timeout = socket_timeout
        self._connect_timeout = connect_timeout
        self._reconnect_max_delay = reconnect_max_delay
        self._ping_interval = ping_interval
        self._client: Redis | None = None
        self._pubsub_client: Redis | None = None
        self._sentinel_clients: list[Redis] = []
        self._scripts: dict[str, AsyncScript] = {}
        self._slots = asyncio.Semaphore(pool_size)
        self._deliver: DeliverCallback | None = None
        self._deliver_many: DeliverManyCallback | None = None
        # Publishes batched and identical reads shared per loop iteration (ssehub/brokers/_coalesce.py).
        self._coalesce = Coalescer(self._send_batch, MAX_BATCH)
        # Events recently read from history, by (channel, id): parsed and encoded once (see _RECENT_EVENTS).
        self._recent: dict[tuple[str, str], Event] = {}
        self._on_gap: GapCallback | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pubsub: PubSub | None = None
        self._up = asyncio.Event()
        self._commands_ok = False
        self._channels: set[str] = set()
        # Per channel, the head when its subscription was confirmed: older events were never due live here.
        # (A catch-up reads from _last for every channel; a channel subscribed later may then look expired
        # when it is not: its streams end and their clients resume exactly, which costs a reconnect only.)
        self._since: dict[str, EventId] = {}
        self._confirm: dict[str, asyncio.Future[None]] = {}
        # The greatest id handed to ``deliver``; live notifications at or below it are duplicates.
        self._last: EventId | None = None
        self._reconnects = 0
        self._last_error = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisBroker:
        """Build the broker from ssehub settings (``broker_url``, ``redis_prefix``, retention, pool size)."""
        return cls(
            settings.broker_url,
            prefix=settings.redis_prefix,
            history_size=settings.history_size,
            history_ttl=settings.history_ttl,
            max_channels=settings.max_channels,
            pool_size=settings.redis_pool_size,
        )

    # -- lifetime -------------------------------------------------------------------------------------------

    def accept_batches(self, deliver_many: DeliverManyCallback) -> None:
        """Hand each run of one channel's live events to ``deliver_many`` at once (see the module docstring)."""
        self._deliver_many = deliver_many

    async def start(self, deliver: DeliverCallback, on_gap: GapCallback | None = None) -> None:
        """Connect and start the pub/sub reader; waits a bounded time for the first connection.

        If Redis cannot be reached yet, the reader keeps trying in the background and ``status()`` says so.
        After a reconnect, channels whose missed events were trimmed from history meanwhile go to ``on_gap``
        (each at most once per reconnect, from the event loop, before the events caught up with it).
        """
        if self._reader is not None:
            raise RuntimeError("RedisBroker.start() called twice")
        options = ClientOptions(self._pool_size, self._socket_timeout, self._connect_timeout)
        self._client, helpers = connect_async(self._target, options)
        # The reader holds one pub/sub connection; 2 leaves room for the one being closed while it reconnects.
        self._pubsub_client, pubsub_helpers = connect_async(self._target, replace(options, pool_size=2))
        self._sentinel_clients = helpers + pubsub_helpers
        for name in ("publish_batch.lua", "read.lua", "head.lua"):
            self._scripts[name] = self._client.register_script(load_script(name))
        self._deliver = deliver
        self._on_gap = on_gap
        self._reader = asyncio.create_task(self._run_reader(), name="ssehub-redis-reader")
        try:
            await asyncio.wait_for(self._up.wait(), self._connect_timeout + self._socket_timeout)
        except TimeoutError:
            logger.warning("Redis at %s not reachable yet; retrying in the background", self._target.describe())

    async def stop(self) -> None:
        """Stop the reader and close every connection."""
        reader, self._reader = self._reader, None
        self._deliver = None
        self._deliver_many = None
        self._on_gap = None
        stopped = BrokerUnavailableError("the broker stopped")
        tasks = self._coalesce.stop(stopped)
        if reader is not None:
            reader.cancel()
            tasks.append(reader)
        if tasks:
            # asyncio.wait does not raise the tasks' CancelledError, so our own cancellation still propagates.
            await asyncio.wait(tasks, timeout=self._socket_timeout + 1)
        self._fail_pending(stopped)
        self._channels.clear()
        self._since.clear()
        self._up.clear()
        self._commands_ok = False
        clients = [c for c in (self._client, self._pubsub_client, *self._sentinel_clients) if c is not None]
        self._client = self._pubsub_client = None
        self._sentinel_clients = []
        for client in clients:
            await client.aclose(close_connection_pool=True)

    # -- commands -------------------------------------------------------------------------------------------

    async def _call(self, script: str, keys: list[str], args: list[str | int], action: str) -> Any:
        from redis.exceptions import RedisError, ResponseError

        client = self._client
        if client is None:
            raise BrokerUnavailableError("the Redis broker is not started")
        try:
            # One bound for waiting on a pool slot and for the call itself.
            async with asyncio.timeout(self._connect_timeout + self._socket_timeout):
                async with self._slots:
                    result = await self._scripts[script](keys=keys, args=args, client=client)
        except (RedisError, OSError, TimeoutError) as exc:
            if not (isinstance(exc, ResponseError) and str(exc).startswith(CHANNEL_LIMIT_MARKER)):
                self._commands_ok = isinstance(exc, ResponseError)
                self._last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
            raise translate_error(exc, action) from exc
        self._commands_ok = True
        return result

    async def publish(self, channel: str, event: str, data: str) -> Event:
        """Store the event and notify every hub, atomically; return it with its id.

        Publishes made during one loop iteration share one script call (see the module docstring); each is
        still stored before it is announced, and fails or succeeds on its own.

        Raises:
            BrokerUnavailableError: Redis cannot be reached; nothing was stored.
            ChannelLimitError: the event would create a channel beyond ``max_channels``.
        """
        validate_channel(channel)
        validate_event_type(event)
        if self._client is None:
            raise BrokerUnavailableError("the Redis broker is not started")
        return await self._coalesce.publish(channel, event, data)

    async def _send_batch(self, batch: list[Pending]) -> None:
        """One ``publish_batch.lua`` call for the batch; each caller gets its own event or its own error."""
        items = [(p.channel, p.event, p.data) for p in batch]
        ((keys, args, _count),) = self._publishing.batch_calls(items)
        try:
            try:
                result = await self._call("publish_batch.lua", keys, args, "publish")
                outcomes = batch_outcomes(result, len(batch))
            except SSEHubError as exc:
                fail(batch, exc)
                return
            for pending, outcome in zip(batch, outcomes, strict=True):
                if pending.future.done():
                    continue  # its caller was cancelled; the event is stored all the same
                if isinstance(outcome, str):
                    event = Event(EventId.parse(outcome), pending.channel, pending.event, pending.data)
                    pending.future.set_result(event)
                else:
                    pending.future.set_exception(outcome)
        finally:
            # Cancelled by stop() (or a bug): no caller may wait for an answer that will never come.
            fail(batch, BrokerUnavailableError("the broker stopped before Redis answered"))

    async def read_since(self, channels: Sequence[str], after: EventId, limit: int) -> History:
        """Stored events after ``after`` on ``channels`` in id order (one atomic read with the head).

        Identical reads asked for during one loop iteration share one Redis call (``_coalesce.Coalescer.shared``): in a
        reconnect storm, thousands of clients resume from the same id.

        Raises:
            BrokerUnavailableError: Redis cannot be reached.
        """
        key = ("read", tuple(channels), after, limit)
        shared = await self._coalesce.shared(key, lambda: self._read_since(channels, after, limit))
        # Each caller gets its own lists: the hub keeps them as a stream's backlog.
        return History(events=list(shared.events), head=shared.head, expired=list(shared.expired))

    async def _read_since(self, channels: Sequence[str], after: EventId, limit: int) -> History:
        layout = self._layout
        keys = [layout.last_id, layout.floor, *(layout.stream(name) for name in channels)]
        result = await self._call("read.lua", keys, [str(after), max(limit, 1), self._options.ttl_ms], "read history")
        head = EventId.parse(str(result[0]))
        expired: list[str] = []
        per_channel: list[list[Event]] = []
        for name, (flag, entries) in zip(channels, result[1:], strict=True):
            if int(flag):
                expired.append(name)
            elif entries:
                per_channel.append(self._events_from(name, entries))
        events = per_channel[0] if len(per_channel) == 1 else list(heapq.merge(*per_channel, key=lambda e: e.id))
        return History(events=events[:limit], head=head, expired=expired)

    def _events_from(self, channel: str, entries: list[Any]) -> list[Event]:
        """Events from XRANGE entries, the same objects as for an earlier read of them (with their frames)."""
        recent = self._recent
        events: list[Event] = []
        for entry in entries:
            key = (channel, entry[0])
            event = recent.get(key)
            if event is None:
                event = recent[key] = events_from_entries(channel, [entry])[0]
                if len(recent) > _RECENT_EVENTS:
                    del recent[next(iter(recent))]  # the oldest inserted
            events.append(event)
        return events

    async def head(self) -> EventId:
        """The last id issued (on first use, the start id from Redis's clock).

        Raises:
            BrokerUnavailableError: Redis cannot be reached.
        """
        return await self._coalesce.shared(("head",), self._head)

    async def _head(self) -> EventId:
        layout = self._layout
        return EventId.parse(str(await self._call("head.lua", [layout.last_id, layout.floor], [], "read the head")))

    # -- subscriptions --------------------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        """Subscribe the pub/sub connection to ``channel``; returns once Redis confirmed it.

        Returning only after the confirmation is what makes the hub's next ``read_since`` exact: every event
        after it either is in that read or arrives live.

        Raises:
            BrokerUnavailableError: the pub/sub connection is down and did not come back within the
                connect timeout, or Redis did not confirm in time.
        """
        from redis.exceptions import RedisError

        validate_channel(channel)
        pending = self._confirm.get(channel)
        if pending is None and channel in self._channels:
            return
        try:
            async with asyncio.timeout(self._connect_timeout + self._socket_timeout):
                if pending is not None:
                    await asyncio.shield(pending)
                    return
                await self._up.wait()
                pubsub = self._pubsub
                if pubsub is None:
                    raise BrokerUnavailableError("the Redis pub/sub connection is down")
                future = self._confirm[channel] = asyncio.get_running_loop().create_future()
                self._channels.add(channel)
                # Until the head below is known, a catch-up (the connection may drop meanwhile) replays nothing
                # of this channel: its streams read history after this call returns, up to a later head.
                self._since[channel] = _NEVER
                await pubsub.subscribe(self._layout.notify(channel))
                await asyncio.shield(future)
                # Live delivery of this channel is exact from here on; what came before, its streams read from
                # history themselves. A catch-up after a reconnect must not hand those older events over.
                self._since[channel] = await self.head()
        except BrokerUnavailableError:
            self._channels.discard(channel)
            self._since.pop(channel, None)
            raise
        except (RedisError, OSError, TimeoutError) as exc:
            self._channels.discard(channel)
            self._since.pop(channel, None)
            raise translate_error(exc, f"subscribe to {channel!r}") from exc
        finally:
            if self._since.get(channel) is _NEVER:
                del self._since[channel]  # cancelled half-way: catch up from the last delivered id as before
            future_done = self._confirm.get(channel)
            if future_done is not None and future_done.done():
                del self._confirm[channel]

    async def unsubscribe(self, channel: str) -> None:
        """Stop live events of ``channel``. Never raises for a broken connection: the reconnect forgets it."""
        from redis.exceptions import RedisError

        self._channels.discard(channel)
        self._since.pop(channel, None)
        pubsub = self._pubsub
        if pubsub is None or not self._up.is_set():
            return
        try:
            async with asyncio.timeout(self._socket_timeout):
                await pubsub.unsubscribe(self._layout.notify(channel))
        except (RedisError, OSError, TimeoutError) as exc:
            logger.info("unsubscribe from %r failed (%s); the reconnect drops it", channel, exc)

    def _fail_pending(self, error: BaseException) -> None:
        for future in self._confirm.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved here, so an unawaited failure is not logged as lost
        self._confirm.clear()

    # -- the reader -----------------------------------------------------------------------------------------

    async def _run_reader(self) -> None:
        from redis.exceptions import RedisError

        delay = _FIRST_DELAY
        while True:
            assert self._pubsub_client is not None  # set by start(), cleared only after this task ends
            pubsub = self._pubsub_client.pubsub()
            try:
                backlog = await self._open(pubsub)
                self._pubsub = pubsub
                self._up.set()
                if delay != _FIRST_DELAY:
                    logger.warning("Redis pub/sub connection restored")
                delay = _FIRST_DELAY
                await self._pump(pubsub, backlog)
            except (RedisError, OSError, TimeoutError, BrokerUnavailableError) as exc:
                self._last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                # One warning per outage; every further attempt only at debug level.
                log = logger.warning if delay == _FIRST_DELAY else logger.debug
                log("Redis pub/sub connection down (%s); reconnecting", self._last_error)
            finally:
                self._up.clear()
                self._pubsub = None
                self._fail_pending(BrokerUnavailableError("the Redis pub/sub connection dropped"))
                try:
                    async with asyncio.timeout(1.0):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
                except (RedisError, OSError, TimeoutError) as exc:
                    logger.debug("closing the pub/sub connection failed: %s", exc)
            self._reconnects += 1
            # Exponential backoff with jitter, so that every node does not hit a restarted Redis at once.
            await asyncio.sleep(delay / 2 + random.uniform(0, delay / 2))
            delay = min(delay * 2, self._reconnect_max_delay)

    async def _open(self, pubsub: PubSub) -> list[dict[str, Any]]:
        """Subscribe, then replay history missed since the last delivered id; return early notifications."""
        channels = sorted(self._channels)
        # After an outage Redis may have lost data and issued ids again: forget the events read before it.
        self._recent.clear()
        # The node channel keeps the connection in subscribed mode even with no channel, so PING works.
        names = [self._layout.tag + ":node", *(self._layout.notify(name) for name in channels)]
        backlog: list[dict[str, Any]] = []
        async with asyncio.timeout(self._connect_timeout + self._socket_timeout):
            await pubsub.subscribe(*names)
            waiting = set(names)
            while waiting:
                message = await pubsub.get_message(timeout=self._socket_timeout)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    waiting.discard(message["channel"])
                else:
                    backlog.append(message)
        # Also proves the command connections work again, which status() reports.
        head = await self.head()
        if self._last is None or not channels:
            # Nothing to replay: live delivery starts after the head.
            self._last = head if self._last is None else max(self._last, head)
        else:
            await self._catch_up(channels)
        return backlog

    async def _catch_up(self, channels: list[str]) -> None:
        assert self._last is not None
        after = self._last
        reported: set[str] = set()
        while True:
            history = await self.read_since(channels, after, _CATCH_UP_PAGE)
            lost = [name for name in history.expired if name not in reported]
            if lost:
                # Reported before this page is handed over: a stream on a lost channel and another one must
                # end before an event of the other one moves its last id past the gap (its resume would then
                # skip the gap silently instead of resetting). A later page reports only channels trimmed
                # while we paged.
                reported.update(lost)
                self._report_gap(lost)
            since = self._since
            for event in history.events:
                start = since.get(event.channel)
                if start is None or event.id > start:
                    self._hand_over(event)
            if len(history.events) < _CATCH_UP_PAGE:
                # Everything up to the head is now delivered: later duplicates are dropped by id.
                self._last = max(self._last, history.head)
                return
            after = history.events[-1].id

    async def _pump(self, pubsub: PubSub, backlog: list[dict[str, Any]]) -> None:
        self._handle_all(backlog)
        ping_sent: float | None = None
        while True:
            message = await pubsub.get_message(timeout=self._ping_interval)
            if message is not None:
                # Take every notification already received (no await suspends for them), then hand them
                # over together: the hub queues a run of one channel's events on each connection at once.
                messages = [message]
                while len(messages) < _READ_BATCH and _has_buffered_reply(pubsub):
                    more = await pubsub.get_message(timeout=0)
                    if more is None:
                        break
                    messages.append(more)
                if any(m["type"] not in PUBSUB_TYPES for m in messages):  # a PONG (see PUBSUB_TYPES)
                    ping_sent = None
                self._handle_all(messages)
                continue
            # Silence: a dead peer without a FIN is only found by asking.
            if ping_sent is not None and time.monotonic() - ping_sent > self._ping_interval + self._socket_timeout:
                raise TimeoutError("no PONG from Redis on the pub/sub connection")
            if ping_sent is None:
                ping_sent = time.monotonic()
                await pubsub.ping()

    def _handle_all(self, messages: list[dict[str, Any]]) -> None:
        """Hand over the events of ``messages`` (in order, each run of one channel at once); confirm subscribes."""
        run: list[Event] = []
        for message in messages:
            kind = message["type"]
            if kind == "message":
                try:
                    event = parse_notification(self._layout, message["channel"], message["data"])
                except ValueError as exc:
                    logger.warning("ignoring a malformed notification on %r: %s", message["channel"], exc)
                    continue
                last = self._last
                if event.channel not in self._channels or (last is not None and event.id <= last):
                    continue
                self._last = event.id
                if run and run[0].channel != event.channel:
                    self._deliver_run(run)
                    run = []
                run.append(event)
            elif kind == "subscribe":
                name = str(message["channel"])[len(self._layout.notify_prefix) :]
                future = self._confirm.get(name)
                if future is not None and not future.done():
                    future.set_result(None)
        if run:
            self._deliver_run(run)

    def _deliver_run(self, events: list[Event]) -> None:
        """Events of one channel, in id order, already checked against ``_last``."""
        deliver_many = self._deliver_many
        if deliver_many is not None and len(events) > 1:
            deliver_many(events)
            return
        deliver = self._deliver
        if deliver is not None:
            for event in events:
                deliver(event)

    def _report_gap(self, channels: list[str]) -> None:
        logger.warning(
            "events on %s were trimmed from history while the pub/sub connection was down; "
            "the hub ends those streams so that their clients resume and reset",
            channels,
        )
        on_gap = self._on_gap
        if on_gap is not None:
            on_gap(channels)

    def _hand_over(self, event: Event) -> None:
        last = self._last
        if last is not None and event.id <= last:
            return
        self._last = event.id
        deliver = self._deliver
        if deliver is not None:
            deliver(event)

    def status(self) -> BrokerStatus:
        """Connection state and counters, without I/O."""
        return BrokerStatus(
            name="redis",
            connected=self._up.is_set() and self._commands_ok,
            details={
                "target": self._target.describe(),
                "prefix": self._layout.prefix,
                "subscribed_channels": len(self._channels),
                "last_delivered_id": str(self._last) if self._last is not None else None,
                "reconnects": self._reconnects,
                "last_error": self._last_error or None,
            },
        )


def _has_buffered_reply(pubsub: PubSub) -> bool:
    """Whether bytes of another reply were already read from the socket (hiredis's buffer), so the next
    ``get_message`` returns without waiting. False when unknown (another parser): the reader then hands over
    one message per wake-up, which is correct, only slower."""
    connection = pubsub.connection
    reader = getattr(getattr(connection, "_parser", None), "_reader", None)
    has_data = getattr(reader, "has_data", None)
    return bool(has_data()) if callable(has_data) else False
