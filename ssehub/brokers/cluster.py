"""The Redis Cluster broker: channels spread over shards, sharded pub/sub, exact resume across shards.

Layout (``docs/redis-layout.md``, "Redis Cluster"): each channel's keys are hash-tagged by the channel, so
channels spread over the shards. Each shard issues ids in its own total order (a counter kept on the shard,
in keys whose tag lands on the shard's anchor slot); the publish script, run on the master of the channel's
slot, takes the next id of that order, stores the event and SPUBLISHes it, atomically.

Live delivery: one pub/sub connection per shard master per process (plain connections, SSUBSCRIBE), whatever
the number of streams. Each connection delivers its shard's events in that shard's order; the broker keeps
one vector, its position on every shard, and stamps every live event with it (``ShardEvent.position``,
encoded once per event): that is the id clients see. A resume with a vector reads, per shard, the events of
the stream's channels after the vector's id on that shard (``read_after``); that is exact per shard because
each shard's events reach the hub in that shard's order. See ``docs/scaling.md`` for slot migrations and
failovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ssehub.brokers._cluster_layout import (
    ClusterTarget,
    Shard,
    Topology,
    parse_cluster_url,
    topology_from_slots,
)
from ssehub.brokers._cluster_publish import ClusterPublishScript, is_stale
from ssehub.brokers._cluster_reader import ShardReader
from ssehub.brokers._redis_layout import CHANNEL_LIMIT_MARKER, load_script, translate_error
from ssehub.brokers._shard_ids import ShardEvent, ShardVector, encode_vector
from ssehub.brokers.base import Broker, BrokerStatus, DeliverCallback, GapCallback, History, Replay
from ssehub.brokers.redis_client import ClientOptions, connect_cluster, require_redis
from ssehub.events import Event, EventId, Position, validate_channel, validate_event_type
from ssehub.exceptions import BrokerUnavailableError

if TYPE_CHECKING:
    from redis.asyncio.cluster import RedisCluster

    from ssehub.settings import Settings

logger = logging.getLogger("ssehub.brokers.cluster")

_SCRIPTS = ("cluster_publish.lua", "cluster_read.lua", "cluster_head.lua", "cluster_lost.lua")


class ClusterBroker(Broker):
    """A broker on Redis Cluster (>= 7.0). Needs ``pip install 'ssehub[redis]'``.

    Args:
        url: ``redis+cluster://[user:password@]host:port[,host:port...]`` (seed nodes; the rest is discovered),
            or ``rediss+cluster://...?ssl_ca_certs=...`` for TLS.
        prefix: what every key name is built on; hubs sharing channels must agree on it.
        history_size: events kept per channel.
        history_ttl: seconds an event is kept.
        max_channels: channels with history per shard; a new one beyond raises ChannelLimitError.
        pool_size: command connections per node.
        socket_timeout: seconds any Redis call may take.
        connect_timeout: seconds a connection attempt may take.
        reconnect_max_delay: longest pause between reconnection attempts of a shard's reader.
        ping_interval: seconds of silence on a pub/sub connection before it is probed with PING.

    Raises:
        MissingDependencyError: redis-py is not installed.
        InvalidValueError: a bad URL, prefix or retention value.
    """

    shared_across_processes = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "ssehub",
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
        self._target: ClusterTarget = parse_cluster_url(url)
        self._publishing = ClusterPublishScript(prefix, history_size, history_ttl, max_channels)
        self._layout = self._publishing.layout
        self._options = self._publishing.options
        self._client_options = ClientOptions(pool_size, socket_timeout, connect_timeout)
        self._pool_size = pool_size
        self._socket_timeout = socket_timeout
        self._connect_timeout = connect_timeout
        self._reconnect_max_delay = reconnect_max_delay
        self._ping_interval = ping_interval
        self._client: RedisCluster | None = None
        self._sources = {name: load_script(name) for name in _SCRIPTS}
        self._shas = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in self._sources.items()}
        self._slots = asyncio.Semaphore(pool_size)
        self._topology = Topology({}, ())
        self._topology_lock = asyncio.Lock()
        self._readers: dict[int, ShardReader] = {}
        # Channels the hub subscribed to, with the anchor of the shard that serves them.
        self._subscribed: dict[str, int] = {}
        self._deliver: DeliverCallback | None = None
        self._on_gap: GapCallback | None = None
        # The hub's position: the last id handed over per shard (live or caught up).
        self._vector: dict[int, EventId] = {}
        # The channel of the last event handed over per shard: a reconnecting reader checks that the shard
        # still holds that event (a failover may have lost it).
        self._last_channel: dict[int, str] = {}
        self._commands_ok = False
        self._last_error = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> ClusterBroker:
        """Build the broker from ssehub settings (``broker_url``, retention, ``redis_pool_size``, prefix)."""
        return cls(
            settings.broker_url,
            prefix=str(getattr(settings, "redis_prefix", "ssehub")),
            history_size=settings.history_size,
            history_ttl=settings.history_ttl,
            max_channels=settings.max_channels,
            pool_size=settings.redis_pool_size,
        )

    # -- lifetime -------------------------------------------------------------------------------------------

    async def start(self, deliver: DeliverCallback, on_gap: GapCallback | None = None) -> None:
        """Discover the shards, start one reader per shard; waits a bounded time for all of them.

        If the cluster cannot be reached yet, readers keep trying in the background and ``status()`` says so.
        """
        if self._client is not None:
            raise RuntimeError("ClusterBroker.start() called twice")
        self._client = connect_cluster(self._target, self._client_options)
        self._deliver = deliver
        self._on_gap = on_gap
        bound = self._connect_timeout + self._socket_timeout
        try:
            async with asyncio.timeout(bound):
                await self._refresh_topology()
        except (BrokerUnavailableError, TimeoutError) as exc:
            logger.warning("Redis Cluster at %s not reachable yet (%s)", self._target.describe(), exc)
        try:
            async with asyncio.timeout(bound):
                for reader in list(self._readers.values()):
                    await reader.up.wait()
        except TimeoutError:
            logger.warning("not every shard of %s reachable yet; retrying in the background", self._target.describe())

    async def stop(self) -> None:
        """Stop every reader and close every connection."""
        readers = list(self._readers.values())
        self._readers = {}
        self._deliver = None
        self._on_gap = None
        for reader in readers:
            await reader.stop(self._socket_timeout + 1)
        self._subscribed.clear()
        self._commands_ok = False
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- topology -------------------------------------------------------------------------------------------

    async def _refresh_topology(self) -> Topology:
        """Ask the cluster which master owns which slot; start a reader for every shard not seen before."""
        from redis.exceptions import RedisError

        client = self._client
        if client is None:
            raise BrokerUnavailableError("the Redis Cluster broker is not started")
        async with self._topology_lock:
            try:
                await client.nodes_manager.initialize()
            except (RedisError, OSError) as exc:
                self._last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                raise translate_error(exc, "discover the cluster") from exc
            topology = topology_from_slots(client.nodes_manager.slots_cache)
            if not topology.shards:
                raise BrokerUnavailableError("Redis Cluster reports no master serving any slot")
            old = self._topology
            self._topology = topology
            for anchor in topology.shards:
                if anchor not in self._readers and self._deliver is not None:
                    self._readers[anchor] = ShardReader(self, anchor)
            if old.shards and old.shards.keys() != topology.shards.keys():
                logger.warning(
                    "Redis Cluster shards changed from %s to %s (resharding): streams of moved channels end and resume",
                    sorted(old.shards),
                    sorted(topology.shards),
                )
            moved = [name for name, anchor in self._subscribed.items() if self._anchor_of(name) != anchor]
        if moved:
            for name in moved:
                self._subscribed[name] = self._anchor_of(name)
                reader = self._readers.get(self._subscribed[name])
                if reader is not None:
                    reader.adopt(name)
            self._report_gap(moved, "their slots moved to another shard")
        return topology

    def _anchor_of(self, channel: str) -> int:
        return self._topology.owner[self._layout.slot(channel)] if self._topology.owner else -1

    def _shard_of(self, channel: str) -> Shard | None:
        return self._topology.shard_of_slot(self._layout.slot(channel)) if self._topology.owner else None

    def _node(self, shard: Shard) -> Any:
        assert self._client is not None
        node = self._client.get_node(host=shard.host, port=shard.port)
        if node is None:
            raise BrokerUnavailableError(f"the master {shard.host}:{shard.port} left the cluster")
        return node

    # -- commands -------------------------------------------------------------------------------------------

    async def _script(self, name: str, keys: list[str], args: list[str | int], action: str, shard: Shard | None) -> Any:
        """Run a script (EVALSHA, EVAL if the node does not have it yet); on ``shard``'s master if given.

        A stale view of the cluster (the script reached a node that no longer owns a key) refreshes the
        topology and raises; the caller retries once. The scripts read the shard keys before writing anything,
        so a script that failed that way changed nothing.
        """
        from redis.exceptions import NoScriptError, RedisError, ResponseError

        client = self._client
        if client is None:
            raise BrokerUnavailableError("the Redis Cluster broker is not started")
        try:
            async with asyncio.timeout(self._connect_timeout + self._socket_timeout):
                async with self._slots:
                    options: dict[str, Any] = {} if shard is None else {"target_nodes": self._node(shard)}
                    try:
                        result = await client.execute_command(
                            "EVALSHA", self._shas[name], len(keys), *keys, *args, **options
                        )
                    except NoScriptError:
                        result = await client.execute_command(
                            "EVAL", self._sources[name], len(keys), *keys, *args, **options
                        )
        except (RedisError, OSError, TimeoutError) as exc:
            text = str(exc)
            if not (isinstance(exc, ResponseError) and text.startswith(CHANNEL_LIMIT_MARKER)):
                self._commands_ok = isinstance(exc, ResponseError)
                self._last_error = f"{type(exc).__name__}: {text[:200]}"
            if not isinstance(exc, ResponseError) or is_stale(exc):
                with contextlib.suppress(BrokerUnavailableError, TimeoutError):
                    async with asyncio.timeout(self._connect_timeout):
                        await self._refresh_topology()
                # Only a ResponseError proves the script did not run (a redirection, or the non-local-key error
                # raised before any write); after a lost connection or a timeout it may have run.
                error = translate_error(exc, action)
                raise _StaleTopology(error, may_have_run=not isinstance(exc, ResponseError)) from exc
            raise translate_error(exc, action) from exc
        self._commands_ok = True
        return result

    async def _retrying(
        self, name: str, keys: list[str], args_for: Any, action: str, shard_for: Any, *, idempotent: bool
    ) -> Any:
        """Run a script; after a stale-topology failure, once more with the refreshed topology.

        A script that is not idempotent (publish) is retried only when it certainly did not run: never after a
        timeout or a dropped connection, where a retry could store an event twice.
        """
        try:
            shard = shard_for()
            return shard, await self._script(name, keys, args_for(shard), action, shard if not keys else None)
        except _StaleTopology as stale:
            if stale.may_have_run and not idempotent:
                raise stale.error from stale
            shard = shard_for()
            try:
                return shard, await self._script(name, keys, args_for(shard), action, shard if not keys else None)
            except _StaleTopology as again:
                raise again.error from again

    def _require_shard(self, channel: str) -> Shard:
        shard = self._shard_of(channel)
        if shard is None:
            raise BrokerUnavailableError(f"no Redis Cluster master serves the slot of channel {channel!r}")
        return shard

    async def publish(self, channel: str, event: str, data: str) -> ShardEvent:
        """Store the event on its channel's shard and notify the hubs reading that shard, atomically.

        Raises:
            BrokerUnavailableError: the shard cannot be reached; nothing was stored.
            ChannelLimitError: the event would create a channel beyond ``max_channels`` on its shard.
        """
        validate_channel(channel)
        validate_event_type(event)
        script = self._publishing

        def args_for(shard: Shard) -> list[str | int]:
            return script.args(shard.anchor, channel, event, data)

        shard, id_text = await self._retrying(
            "cluster_publish.lua",
            script.keys(channel),
            args_for,
            "publish",
            lambda: self._require_shard(channel),
            idempotent=False,
        )
        return ShardEvent(EventId.parse(str(id_text)), channel, event, data, shard.anchor)

    async def _read_shard(
        self, anchor: int, channels: Sequence[str], after: EventId | None, limit: int
    ) -> tuple[EventId, list[str], list[list[ShardEvent]]]:
        """One atomic read on one shard: its head, the expired channels, each channel's events after ``after``."""
        layout = self._layout

        def args_for(shard: Shard) -> list[str | int]:
            return [
                layout.shard_prefix(anchor),
                anchor,
                "" if after is None else str(after),
                max(limit, 1),
                self._options.ttl_ms,
                layout.channel_prefix,
                *channels,
            ]

        def shard_for() -> Shard:
            shard = self._topology.shards.get(anchor)
            if shard is None:
                raise BrokerUnavailableError(f"the shard named {anchor} is not in the cluster any more")
            return shard

        _, result = await self._retrying("cluster_read.lua", [], args_for, "read history", shard_for, idempotent=True)
        head = EventId.parse(str(result[0]))
        expired: list[str] = []
        per_channel: list[list[ShardEvent]] = []
        for name, (flag, entries) in zip(channels, result[1:], strict=True):
            if int(flag):
                expired.append(name)
            elif entries:
                per_channel.append(_events(name, entries, anchor))
        return head, expired, per_channel

    async def _head_of(self, anchor: int) -> EventId:
        shard = self._topology.shards.get(anchor)
        if shard is None:
            raise BrokerUnavailableError(f"the shard named {anchor} is not in the cluster any more")
        result = await self._script("cluster_head.lua", [], [self._layout.shard_prefix(anchor)], "read the head", shard)
        return EventId.parse(str(result))

    # -- positions ------------------------------------------------------------------------------------------

    def parse_position(self, text: str) -> ShardVector:
        """Parse a cluster position (``c1.<shard>:<ms>-<seq>...``).

        Raises:
            InvalidEventIdError: not a cluster position.
        """
        return ShardVector.parse(text)

    async def position(self) -> ShardVector:
        """The head of every shard, read now (one call per shard, concurrently).

        A shard that cannot be read right now (failing over) gets this hub's own position on it: a stream on
        one of its channels could not have subscribed meanwhile, and other streams have nothing there, so one
        shard's outage does not refuse streams on the others.

        Raises:
            BrokerUnavailableError: a shard cannot be reached and this hub has no position on it yet.
        """
        anchors = list(self._topology.shards)
        if not anchors:
            await self._refresh_topology()
            anchors = list(self._topology.shards)
        results = await asyncio.gather(*(self._head_of(anchor) for anchor in anchors), return_exceptions=True)
        heads: dict[int, EventId] = {}
        for anchor, result in zip(anchors, results, strict=True):
            if isinstance(result, EventId):
                heads[anchor] = result
            elif isinstance(result, BrokerUnavailableError) and anchor in self._vector:
                heads[anchor] = self._vector[anchor]
            else:
                raise result
        return ShardVector(heads)

    async def read_after(self, channels: Sequence[str], after: Position, limit: int) -> Replay:
        """Per shard, the stream's channels' events after the vector's id on that shard; merged.

        Each replayed event carries the client's vector advanced by the events replayed before it, so a client
        that drops mid-replay resumes exactly from there. A channel is expired when the vector has no
        position on its shard, its history no longer reaches back to it, or the shard lost history (failover).

        Raises:
            BrokerUnavailableError: a shard cannot be reached.
        """
        if not isinstance(after, ShardVector):
            raise TypeError(f"cluster positions are ShardVectors, got {type(after).__name__}")
        if not self._topology.owner:
            await self._refresh_topology()
        groups: dict[int, list[str]] = {}
        for name in channels:
            groups.setdefault(self._anchor_of(name), []).append(name)
        missing = groups.pop(-1, [])
        if missing:
            raise BrokerUnavailableError(f"no Redis Cluster master serves the slots of {missing}")
        reads = await asyncio.gather(
            *(self._read_shard(anchor, names, after.get(anchor), limit) for anchor, names in groups.items())
        )
        heads: dict[int, EventId] = {}
        expired: list[str] = []
        lists: list[list[ShardEvent]] = []
        for anchor, (head, lost, per_channel) in zip(groups, reads, strict=True):
            heads[anchor] = head
            expired += lost
            lists += per_channel
        # Any interleaving that keeps each shard's order is exact; merging by id reads naturally.
        merged = lists[0] if len(lists) == 1 else list(heapq.merge(*lists, key=lambda e: (e.id, e.shard)))
        events = merged[:limit]
        await self._live_reaches(events)
        running = dict(after.items())
        for event in events:
            running[event.shard] = event.id
            event.position = encode_vector(running)
        return Replay(list[Event](events), after.merged(heads), expired)

    async def _live_reaches(self, events: Sequence[ShardEvent]) -> None:
        """Wait until live delivery has passed the last of ``events`` on each of their shards.

        A live notification can lag behind a history read (it travels on the shard's pub/sub connection, the
        read on a command connection). A PING on the pub/sub connection, sent after the read, is answered
        after every notification the shard queued for us before it: once its PONG is in, every later live
        event of the stream's channels is newer than the read, on every shard at once, so the subscription
        may go live at its first newer event (see ``Subscription.hold``).
        """
        shards = {event.shard for event in events}
        readers = [self._readers[anchor] for anchor in shards if anchor in self._readers]
        if readers:
            await asyncio.gather(*(reader.barrier() for reader in readers))

    async def head(self) -> EventId:
        """The greatest head over all shards (ids of different shards are only comparable as times).

        Raises:
            BrokerUnavailableError: a shard cannot be reached.
        """
        vector = await self.position()
        return max(event_id for _, event_id in vector.items())

    async def read_since(self, channels: Sequence[str], after: EventId, limit: int) -> History:
        """Events with an id greater than ``after`` on every shard (a cut by time, not a resume position).

        Raises:
            BrokerUnavailableError: a shard cannot be reached.
        """
        anchors = list(self._topology.shards)
        replay = await self.read_after(channels, ShardVector(dict.fromkeys(anchors, after)), limit)
        assert isinstance(replay.cutoff, ShardVector)
        head = max([after, *(event_id for _, event_id in replay.cutoff.items())])
        return History(replay.events, head, replay.expired)

    # -- subscriptions --------------------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        """SSUBSCRIBE the connection of the channel's shard; returns once the shard confirmed it.

        Raises:
            BrokerUnavailableError: the shard's connection is down and did not come back in time.
        """
        validate_channel(channel)
        if not self._topology.owner:
            await self._refresh_topology()
        anchor = self._anchor_of(channel)
        reader = self._readers.get(anchor)
        if reader is None:
            raise BrokerUnavailableError(f"no Redis Cluster master serves the slot of channel {channel!r}")
        self._subscribed[channel] = anchor
        try:
            await reader.subscribe(channel)
        except BaseException:
            if self._subscribed.get(channel) == anchor:
                del self._subscribed[channel]
            raise

    async def unsubscribe(self, channel: str) -> None:
        """Stop live events of ``channel``. Never raises for a broken connection: the reconnect forgets it."""
        anchor = self._subscribed.pop(channel, None)
        reader = self._readers.get(anchor) if anchor is not None else None
        if reader is not None:
            await reader.unsubscribe(channel)

    # -- delivery -------------------------------------------------------------------------------------------

    def _hand_over(self, event: ShardEvent) -> None:
        """Advance the hub's vector by one event of one shard and pass the event on, stamped with the vector."""
        anchor = event.shard
        last = self._vector.get(anchor)
        if last is not None and event.id <= last:
            return
        self._vector[anchor] = event.id
        self._last_channel[anchor] = event.channel
        event.position = encode_vector(self._vector)
        deliver = self._deliver
        if deliver is not None:
            deliver(event)

    def _advance(self, anchor: int, head: EventId) -> None:
        last = self._vector.get(anchor)
        if last is None or head > last:
            self._vector[anchor] = head

    def _report_gap(self, channels: list[str], why: str) -> None:
        logger.warning("live delivery on %s lost events (%s); the hub ends those streams", channels, why)
        on_gap = self._on_gap
        if on_gap is not None:
            on_gap(channels)

    def status(self) -> BrokerStatus:
        """Connection state per shard and counters, without I/O."""
        readers = self._readers
        up = bool(readers) and all(reader.up.is_set() for reader in readers.values())
        return BrokerStatus(
            name="redis-cluster",
            connected=up and self._commands_ok,
            details={
                "target": self._target.describe(),
                "prefix": self._layout.prefix,
                "shards": {
                    str(anchor): {
                        "master": f"{shard.host}:{shard.port}",
                        "connected": anchor in readers and readers[anchor].up.is_set(),
                        "position": str(self._vector[anchor]) if anchor in self._vector else None,
                        "reconnects": readers[anchor].reconnects if anchor in readers else 0,
                    }
                    for anchor, shard in sorted(self._topology.shards.items())
                },
                "subscribed_channels": len(self._subscribed),
                "last_error": self._last_error or None,
            },
        )


class _StaleTopology(BrokerUnavailableError):
    """A script failed on a node that may no longer own what the caller thought; the topology was refreshed."""

    def __init__(self, error: Exception, *, may_have_run: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.may_have_run = may_have_run


def _events(channel: str, entries: list[Any], anchor: int) -> list[ShardEvent]:
    events: list[ShardEvent] = []
    for entry_id, fields in entries:
        values = dict(zip(fields[::2], fields[1::2], strict=True))
        events.append(ShardEvent(EventId.parse(entry_id), channel, values["event"], values["data"], anchor))
    return events
