"""A process's live connection to one shard of a Redis Cluster: sharded pub/sub, reconnection, catch-up.

Used by :class:`ssehub.brokers.cluster.ClusterBroker`, one reader per shard master, whatever the number of
streams.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from ssehub.brokers._cluster_layout import Topology
from ssehub.brokers._redis_layout import PUBSUB_TYPES, translate_error
from ssehub.brokers._shard_ids import ShardEvent
from ssehub.brokers.redis_client import connect_shard
from ssehub.events import EventId
from ssehub.exceptions import BrokerUnavailableError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

    from ssehub.brokers.cluster import ClusterBroker

logger = logging.getLogger("ssehub.brokers.cluster")

#: Events read per page when catching up after a reconnect.
CATCH_UP_PAGE = 1000
#: Seconds before the first reconnection attempt; doubled per failure up to the broker's maximum.
FIRST_DELAY = 0.05


class ShardReader:
    """The one pub/sub connection of a process to one shard's master, and its reconnection loop.

    On every (re)connection it SSUBSCRIBEs the shard's channels, then compares the shard's head with the
    hub's position on it: below it, the shard lost history in a failover (marked in Redis, streams ended so
    their clients reset); otherwise it replays what was missed while down, then goes live.
    """

    def __init__(self, broker: ClusterBroker, anchor: int) -> None:
        self.broker = broker
        self.anchor = anchor
        self.up = asyncio.Event()
        self.reconnects = 0
        self._pubsub: PubSub | None = None
        self._channels: set[str] = set()
        self._confirm: dict[str, asyncio.Future[None]] = {}
        self._adopting: set[asyncio.Task[None]] = set()
        # PINGs sent and PONGs received on the current connection: Redis answers PINGs in order, after the
        # messages queued before each, so a barrier waits for the PONG of its own PING by number.
        self._pings = 0
        self._pongs = 0
        self._ping_lock = asyncio.Lock()
        self._barriers: list[tuple[int, asyncio.Future[None]]] = []
        self._task = asyncio.create_task(self._run(), name=f"ssehub-cluster-reader-{anchor}")

    def adopt(self, channel: str) -> None:
        """A channel was assigned to this shard (its slot moved here): subscribe it in the background.

        If the connection is down, the next reconnection subscribes it anyway (it reads ``broker._subscribed``).
        """
        task = asyncio.get_running_loop().create_task(self.subscribe(channel), name=f"ssehub-adopt-{channel}")
        self._adopting.add(task)
        task.add_done_callback(self._adopted)

    def _adopted(self, task: asyncio.Task[None]) -> None:
        self._adopting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.info("subscribing a moved channel failed (%s); the next reconnection retries", task.exception())

    async def barrier(self) -> None:
        """Return once every notification this shard sent before now has been handed over (bounded wait).

        A PING on the pub/sub connection is answered after the messages queued before it. If the connection is
        down, waiting for it to come back is enough: a reconnection catches up from history before it is up.
        """
        broker = self.broker
        try:
            async with asyncio.timeout(broker._connect_timeout + broker._socket_timeout):
                await self.up.wait()
                pubsub = self._pubsub
                if pubsub is None:
                    return
                number = await self._ping(pubsub)
                if self._pongs >= number:
                    return
                future = asyncio.get_running_loop().create_future()
                self._barriers.append((number, future))
                await asyncio.shield(future)
        except TimeoutError:
            logger.warning("shard %s: no answer to a delivery barrier in time", self.anchor)

    async def stop(self, timeout: float) -> None:
        for task in list(self._adopting):
            task.cancel()
        self._task.cancel()
        # asyncio.wait does not raise the task's CancelledError, so our own cancellation still propagates.
        await asyncio.wait([self._task], timeout=timeout)
        self._fail_pending(BrokerUnavailableError("the broker stopped"))

    async def subscribe(self, channel: str) -> None:
        from redis.exceptions import RedisError

        broker = self.broker
        pending = self._confirm.get(channel)
        if pending is None and channel in self._channels:
            return
        try:
            async with asyncio.timeout(broker._connect_timeout + broker._socket_timeout):
                if pending is not None:
                    await asyncio.shield(pending)
                    return
                await self.up.wait()
                pubsub = self._pubsub
                if pubsub is None:
                    raise BrokerUnavailableError("the shard's pub/sub connection is down")
                future = self._confirm[channel] = asyncio.get_running_loop().create_future()
                self._channels.add(channel)
                await pubsub.ssubscribe(broker._layout.notify(channel))
                await asyncio.shield(future)
        except BrokerUnavailableError:
            self._channels.discard(channel)
            raise
        except (RedisError, OSError, TimeoutError) as exc:
            self._channels.discard(channel)
            raise translate_error(exc, f"subscribe to {channel!r}") from exc
        finally:
            done = self._confirm.get(channel)
            if done is not None and done.done():
                del self._confirm[channel]

    async def unsubscribe(self, channel: str) -> None:
        from redis.exceptions import RedisError

        self._channels.discard(channel)
        pubsub = self._pubsub
        if pubsub is None or not self.up.is_set():
            return
        try:
            async with asyncio.timeout(self.broker._socket_timeout):
                await pubsub.sunsubscribe(self.broker._layout.notify(channel))
        except (RedisError, OSError, TimeoutError) as exc:
            logger.info("sunsubscribe from %r failed (%s); the reconnect drops it", channel, exc)

    def _fail_pending(self, error: BaseException) -> None:
        for future in self._confirm.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved, so an unawaited failure is not logged as lost
        self._confirm.clear()
        for _, waiter in self._barriers:
            if not waiter.done():
                waiter.set_result(None)  # the reconnection catches up from history before it is up again
        self._barriers.clear()

    async def _ping(self, pubsub: PubSub) -> int:
        """Send a PING; return its number on this connection (one at a time, so numbers follow wire order)."""
        async with self._ping_lock:
            self._pings += 1
            number = self._pings
            await pubsub.ping()
            return number

    def _on_pong(self) -> None:
        self._pongs += 1
        if self._barriers:
            done = [entry for entry in self._barriers if entry[0] <= self._pongs]
            for entry in done:
                self._barriers.remove(entry)
                if not entry[1].done():
                    entry[1].set_result(None)

    async def _run(self) -> None:
        from redis.exceptions import RedisError

        broker = self.broker
        delay = FIRST_DELAY
        while True:
            client: Redis | None = None
            pubsub: PubSub | None = None
            try:
                shard = broker._topology.shards.get(self.anchor)
                if shard is None:
                    raise BrokerUnavailableError(f"no master of the shard named {self.anchor}")
                client = connect_shard(broker._target, shard, broker._client_options)
                self._pings = self._pongs = 0
                pubsub = client.pubsub()
                backlog = await self._open(pubsub)
                self._pubsub = pubsub
                self.up.set()
                if delay != FIRST_DELAY:
                    logger.warning("pub/sub connection to shard %s (%s:%s) back", self.anchor, shard.host, shard.port)
                delay = FIRST_DELAY
                await self._pump(pubsub, backlog)
            except (RedisError, OSError, TimeoutError, BrokerUnavailableError) as exc:
                broker._last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                log = logger.warning if delay == FIRST_DELAY else logger.debug
                log("pub/sub connection to shard %s down (%s); reconnecting", self.anchor, broker._last_error)
            finally:
                self.up.clear()
                self._pubsub = None
                self._fail_pending(BrokerUnavailableError("the shard's pub/sub connection dropped"))
                for closing in (pubsub, client):
                    if closing is None:
                        continue
                    try:
                        async with asyncio.timeout(1.0):
                            await closing.aclose()
                    except (RedisError, OSError, TimeoutError) as exc:
                        logger.debug("closing a shard connection failed: %s", exc)
            self.reconnects += 1
            await asyncio.sleep(delay / 2 + random.uniform(0, delay / 2))
            delay = min(delay * 2, broker._reconnect_max_delay)
            # A failover or a migration moves slots: ask the cluster again before reconnecting.
            try:
                async with asyncio.timeout(broker._connect_timeout + broker._socket_timeout):
                    await broker._refresh_topology()
            except (BrokerUnavailableError, TimeoutError) as exc:
                logger.debug("topology refresh failed: %s", exc)

    async def _open(self, pubsub: PubSub) -> list[dict[str, Any]]:
        """Subscribe, then deliver what was missed (or mark lost history); return early notifications."""
        broker = self.broker
        layout = broker._layout
        self._channels = {name for name, anchor in broker._subscribed.items() if anchor == self.anchor}
        channels = sorted(self._channels)
        backlog: list[dict[str, Any]] = []
        async with asyncio.timeout(broker._connect_timeout + broker._socket_timeout):
            await pubsub.subscribe(layout.node_channel)
            waiting = {layout.node_channel}
            for name in channels:
                # One SSUBSCRIBE per channel: one command may only name channels of one slot.
                await pubsub.ssubscribe(layout.notify(name))
                waiting.add(layout.notify(name))
            while waiting:
                message = await pubsub.get_message(timeout=broker._socket_timeout)
                if message is None:
                    continue
                if message["type"] in ("subscribe", "ssubscribe"):
                    waiting.discard(message["channel"])
                else:
                    backlog.append(message)
        head = await broker._head_of(self.anchor)
        last = broker._vector.get(self.anchor)
        lost = False
        if last is not None:
            # Does the master we now talk to know the last id we delivered? If not, a failover lost events
            # its replica never received: marked in Redis (clients behind them reset), streams ended.
            channel = broker._last_channel.get(self.anchor)
            lost = bool(
                await broker._script(
                    "cluster_lost.lua",
                    [],
                    [layout.shard_prefix(self.anchor), str(last), layout.stream(channel) if channel else ""],
                    "check for lost history",
                    broker._topology.shards[self.anchor],
                )
            )
        if lost:
            logger.warning("shard %s lost events up to %s in a failover (its head is %s)", self.anchor, last, head)
            if channels:
                broker._report_gap(channels, f"shard {self.anchor} lost events in a failover")
        elif last is not None and channels:
            await self._catch_up(channels, last)
        broker._advance(self.anchor, head)
        return backlog

    async def _catch_up(self, channels: list[str], after: EventId) -> None:
        broker = self.broker
        reported: set[str] = set()
        while True:
            _, expired, per_channel = await broker._read_shard(self.anchor, channels, after, CATCH_UP_PAGE)
            lost = [name for name in expired if name not in reported]
            if lost:
                # Before this page is handed over (see RedisBroker._catch_up for why the order matters).
                reported.update(lost)
                broker._report_gap(lost, "trimmed from history while the shard's connection was down")
            events = list(heapq.merge(*per_channel, key=lambda e: e.id))[:CATCH_UP_PAGE]
            for event in events:
                broker._hand_over(event)
            if len(events) < CATCH_UP_PAGE:
                return
            after = events[-1].id

    async def _pump(self, pubsub: PubSub, backlog: list[dict[str, Any]]) -> None:
        for message in backlog:
            self._handle(message)
        ping_sent: float | None = None
        interval = self.broker._ping_interval
        while True:
            message = await pubsub.get_message(timeout=interval)
            if message is not None:
                if message["type"] not in PUBSUB_TYPES:
                    # A PONG. redis-py with decode_responses=True does not recognise the subscribed-mode PING
                    # reply (it reports the reply text's letters as type, channel and data): anything that is
                    # not a pub/sub message or (un)subscription confirmation is a PONG.
                    ping_sent = None
                    self._on_pong()
                else:
                    self._handle(message)
                continue
            # Silence: a dead peer without a FIN is only found by asking.
            if ping_sent is not None and time.monotonic() - ping_sent > interval + self.broker._socket_timeout:
                raise TimeoutError("no PONG on the shard's pub/sub connection")
            if ping_sent is None:
                ping_sent = time.monotonic()
                await self._ping(pubsub)

    def _handle(self, message: dict[str, Any]) -> None:
        broker = self.broker
        layout = broker._layout
        kind = message["type"]
        channel_text = str(message["channel"])
        name = channel_text[len(layout.channel_prefix) : -len("}:notify")]
        if kind == "smessage":
            if name not in self._channels:
                return
            try:
                anchor_text, id_text, event, data = str(message["data"]).split("\n", 3)
                shard_event = ShardEvent(EventId.parse(id_text), name, event, data, int(anchor_text))
            except ValueError as exc:
                logger.warning("ignoring a malformed notification on %r: %s", channel_text, exc)
                return
            broker._hand_over(shard_event)
        elif kind == "ssubscribe":
            future = self._confirm.get(name)
            if future is not None and not future.done():
                future.set_result(None)
        elif kind == "sunsubscribe" and name in self._channels and broker._subscribed.get(name) == self.anchor:
            # Not asked for: Redis drops shard subscriptions of a slot that migrated away. End those streams
            # (their clients resume and are told to reset if their position predates the move), and find the
            # new owner.
            self._channels.discard(name)
            broker._report_gap([name], "its slot migrated to another shard")
            refresh = asyncio.get_running_loop().create_task(broker._refresh_topology())
            refresh.add_done_callback(_log_refresh)


def _log_refresh(task: asyncio.Task[Topology]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("topology refresh after a slot migration failed: %s", task.exception())
