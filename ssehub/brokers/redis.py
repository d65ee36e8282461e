"""The Redis broker: history in Redis Streams, live delivery over pub/sub, shared by any number of hubs.

Every publish runs ``lua/publish.lua``, which issues the next id of one global sequence (kept in one key),
adds the event to the channel's stream, trims it and PUBLISHes a notification, all in one atomic step: a
subscriber never sees an event that history lacks, nor the reverse, and notifications leave Redis in id
order. The key layout and the script contract are in ``docs/redis-layout.md``.

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

from ssehub.brokers._redis_layout import (
    CHANNEL_LIMIT_MARKER,
    DEFAULT_PREFIX,
    PublishOptions,
    PublishScript,
    RedisLayout,
    events_from_entries,
    load_script,
    parse_notification,
    translate_error,
)
from ssehub.brokers.base import Broker, BrokerStatus, DeliverCallback, GapCallback, History
from ssehub.brokers.redis_client import ClientOptions, RedisTarget, connect_async, parse_redis_url, require_redis
from ssehub.events import Event, EventId, validate_channel, validate_event_type
from ssehub.exceptions import BrokerUnavailableError

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
        self._on_gap: GapCallback | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pubsub: PubSub | None = None
        self._up = asyncio.Event()
        self._commands_ok = False
        self._channels: set[str] = set()
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
        for name in ("publish.lua", "read.lua", "head.lua"):
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
        self._on_gap = None
        if reader is not None:
            reader.cancel()
            # asyncio.wait does not raise the reader's CancelledError, so our own cancellation still propagates.
            await asyncio.wait([reader], timeout=self._socket_timeout + 1)
        self._fail_pending(BrokerUnavailableError("the broker stopped"))
        self._channels.clear()
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
        """Store the event and notify every hub, atomically (one Lua script); return it with its id.

        Raises:
            BrokerUnavailableError: Redis cannot be reached; nothing was stored.
            ChannelLimitError: the event would create a channel beyond ``max_channels``.
        """
        validate_channel(channel)
        validate_event_type(event)
        keys, args = self._publishing.call(channel, event, data)
        id_text = await self._call("publish.lua", keys, args, "publish")
        return Event(EventId.parse(str(id_text)), channel, event, data)

    async def read_since(self, channels: Sequence[str], after: EventId, limit: int) -> History:
        """Stored events after ``after`` on ``channels`` in id order (one atomic read with the head).

        Raises:
            BrokerUnavailableError: Redis cannot be reached.
        """
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
                per_channel.append(events_from_entries(name, entries))
        events = per_channel[0] if len(per_channel) == 1 else list(heapq.merge(*per_channel, key=lambda e: e.id))
        return History(events=events[:limit], head=head, expired=expired)

    async def head(self) -> EventId:
        """The last id issued (on first use, the start id from Redis's clock).

        Raises:
            BrokerUnavailableError: Redis cannot be reached.
        """
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
                await pubsub.subscribe(self._layout.notify(channel))
                await asyncio.shield(future)
        except BrokerUnavailableError:
            self._channels.discard(channel)
            raise
        except (RedisError, OSError, TimeoutError) as exc:
            self._channels.discard(channel)
            raise translate_error(exc, f"subscribe to {channel!r}") from exc
        finally:
            future_done = self._confirm.get(channel)
            if future_done is not None and future_done.done():
                del self._confirm[channel]

    async def unsubscribe(self, channel: str) -> None:
        """Stop live events of ``channel``. Never raises for a broken connection: the reconnect forgets it."""
        from redis.exceptions import RedisError

        self._channels.discard(channel)
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
            for event in history.events:
                self._hand_over(event)
            if len(history.events) < _CATCH_UP_PAGE:
                # Everything up to the head is now delivered: later duplicates are dropped by id.
                self._last = max(self._last, history.head)
                return
            after = history.events[-1].id

    async def _pump(self, pubsub: PubSub, backlog: list[dict[str, Any]]) -> None:
        for message in backlog:
            self._handle(message)
        ping_sent: float | None = None
        while True:
            message = await pubsub.get_message(timeout=self._ping_interval)
            if message is not None:
                if message["type"] == "pong":
                    ping_sent = None
                else:
                    self._handle(message)
                continue
            # Silence: a dead peer without a FIN is only found by asking.
            if ping_sent is not None and time.monotonic() - ping_sent > self._ping_interval + self._socket_timeout:
                raise TimeoutError("no PONG from Redis on the pub/sub connection")
            if ping_sent is None:
                ping_sent = time.monotonic()
                await pubsub.ping()

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "message":
            try:
                event = parse_notification(self._layout, message["channel"], message["data"])
            except ValueError as exc:
                logger.warning("ignoring a malformed notification on %r: %s", message["channel"], exc)
                return
            if event.channel in self._channels:
                self._hand_over(event)
        elif kind == "subscribe":
            name = str(message["channel"])[len(self._layout.notify_prefix) :]
            future = self._confirm.get(name)
            if future is not None and not future.done():
                future.set_result(None)

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
