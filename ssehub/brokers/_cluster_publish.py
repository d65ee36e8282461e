"""Publishing on a Redis Cluster: what the cluster broker and both publishers share.

One event is one call of ``cluster_publish.lua`` on the master of its channel's slot, with the key prefix and
anchor of that master's shard as arguments (:class:`ClusterPublishScript`): the script takes the next id of
the shard's order, stores the event and SPUBLISHes it, atomically. The broker runs it through redis-py's
cluster client. The publishers (:class:`ClusterNodes`, :class:`AsyncClusterNodes`) hold one small pool per
master and send each shard's events as one pipeline of script calls: one round trip per shard, each call
still atomic and on its own, in order on one connection, so the events of a channel keep their order.

A call that fails because the caller's view of the cluster is stale (a redirection, the script reaching a
shard key that is not on that node, a cluster reconfiguring) certainly did not run: the caller refreshes its
view and retries once. After a lost connection or a timeout it may have run, and is never retried (an event
stored twice is worse than a 503).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ssehub.brokers._cluster_layout import (
    ClusterLayout,
    ClusterTarget,
    Shard,
    Topology,
    topology_from_cluster_slots,
)
from ssehub.brokers._redis_layout import MAX_BATCH, PublishOptions, load_script, translate_error
from ssehub.brokers.redis_client import ClientOptions, connect_node, connect_node_sync
from ssehub.exceptions import BrokerUnavailableError, SSEHubError

if TYPE_CHECKING:
    import redis
    import redis.asyncio

#: Passes of one publish at most: after a stale view of the cluster, and after a master that lost the script.
PASSES = 3
#: Error texts of a script call that reached a node that no longer owns what the caller thought.
STALE_MARKERS = ("non local key", "MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")


def is_stale(exc: BaseException) -> bool:
    """Whether a failed call certainly did not run because the caller's view of the cluster is stale."""
    from redis.exceptions import AskError, ClusterDownError, ResponseError, TryAgainError

    # AskError covers MovedError; a plain connection reports redirections as these, without the word.
    if isinstance(exc, (AskError, TryAgainError, ClusterDownError)):
        return True
    return isinstance(exc, ResponseError) and any(marker in str(exc) for marker in STALE_MARKERS)


class ClusterPublishScript:
    """``cluster_publish.lua`` and its KEYS and ARGV: what the cluster broker and every publisher run.

    Args:
        prefix, history_size, history_ttl, max_channels: as the hubs on that cluster use them.

    Raises:
        InvalidValueError: a bad prefix or retention value.
    """

    __slots__ = ("layout", "options", "sha", "source")

    def __init__(self, prefix: str, history_size: int, history_ttl: float, max_channels: int) -> None:
        self.layout = ClusterLayout(prefix)
        self.options = PublishOptions(history_size, history_ttl, max_channels)
        self.source = load_script("cluster_publish.lua")
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def keys(self, channel: str) -> list[str]:
        """The declared keys (both in the channel's slot)."""
        return [self.layout.stream(channel), self.layout.home(channel)]

    def args(self, anchor: int, channel: str, event: str, data: str) -> list[str | int]:
        """The arguments for publishing on the shard named ``anchor`` (the master of the channel's slot)."""
        layout, options = self.layout, self.options
        return [
            layout.shard_prefix(anchor),
            anchor,
            channel,
            event,
            data,
            options.history_size,
            options.ttl_ms,
            options.max_channels,
            layout.notify(channel),
            layout.channel_prefix,
        ]


@dataclass(slots=True)
class ShardCall:
    """Up to MAX_BATCH events for one master, as the commands of one pipeline (``indices``: their places)."""

    shard: Shard
    indices: list[int]
    commands: list[tuple[str | int, ...]] = field(default_factory=list)
    loads: bool = False  # the first command is a SCRIPT LOAD


class ClusterBatch:
    """One publish (or publish_many) on a cluster, without I/O: what to send to which master, and each outcome.

    ``calls(topology)`` groups the events still to send by master, in order; the caller runs each master's
    calls in order (a pipeline each), reports ``record``/``fail``, and asks ``again()`` whether another pass
    is worth it (some calls certainly did not run because its view was stale, or a master lacked the script);
    at most PASSES passes.
    """

    def __init__(
        self, script: ClusterPublishScript, items: Sequence[tuple[str, str, str]], loaded: set[tuple[str, int]]
    ) -> None:
        self._script = script
        self._items = items
        self._loaded = loaded  # the masters known to have the script (the caller's, updated here)
        self.outcomes: list[str | SSEHubError | None] = [None] * len(items)
        self._todo = list(range(len(items)))
        self._retryable: dict[int, BaseException] = {}
        self.stale = False  # the caller should refresh its view of the cluster before the next pass or call

    def calls(self, topology: Topology) -> dict[Shard, list[ShardCall]]:
        """The events still to send, grouped by the master of their channel's slot, MAX_BATCH per call."""
        layout, script = self._script.layout, self._script
        grouped: dict[Shard, list[ShardCall]] = {}
        for index in self._todo:
            channel, event, data = self._items[index]
            shard = topology.shard_of_slot(layout.slot(channel)) if topology.owner else None
            if shard is None:
                self._retryable[index] = BrokerUnavailableError(
                    f"no Redis Cluster master serves the slot of channel {channel!r}"
                )
                self.stale = True
                continue
            calls = grouped.setdefault(shard, [])
            if not calls or len(calls[-1].indices) >= MAX_BATCH:
                # A master not known to have the script gets it first, in the same round trip.
                load = not calls and (shard.host, shard.port) not in self._loaded
                calls.append(ShardCall(shard, [], [("SCRIPT", "LOAD", script.source)] if load else [], load))
            keys = script.keys(channel)
            calls[-1].indices.append(index)
            calls[-1].commands.append(
                ("EVALSHA", script.sha, len(keys), *keys, *script.args(shard.anchor, channel, event, data))
            )
        return grouped

    def record(self, call: ShardCall, results: Sequence[Any]) -> None:
        """The answers of one pipeline (``raise_on_error=False``: an exception in place of a failed command)."""
        from redis.exceptions import NoScriptError, RedisError

        address = (call.shard.host, call.shard.port)
        if call.loads and isinstance(results[0], str):
            self._loaded.add(address)
        answers = results[1:] if call.loads else results
        for index, answer in zip(call.indices, answers, strict=True):
            if isinstance(answer, NoScriptError):  # flushed or restarted since: load it again next pass
                self._retryable[index] = answer
                self._loaded.discard(address)
            elif isinstance(answer, BaseException) and is_stale(answer):
                self._retryable[index] = answer
                self.stale = True
            elif isinstance(answer, (RedisError, OSError)):
                self.outcomes[index] = _translated(answer)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                self.outcomes[index] = str(answer)

    def fail(self, calls: Sequence[ShardCall], exc: BaseException) -> None:
        """These calls failed as a whole (connection lost, timeout): they may have run; never retried."""
        error = exc if isinstance(exc, SSEHubError) else _translated(exc)
        for call in calls:
            for index in call.indices:
                self.outcomes[index] = error
        self.stale = True  # a master that cannot be reached may have failed over

    def abandon(self, error: SSEHubError) -> None:
        """Nothing more can be sent (the cluster cannot be reached): every event not yet sent gets ``error``."""
        for index in self._todo:
            if self.outcomes[index] is None:
                self.outcomes[index] = error
        self._todo = []

    def again(self) -> bool:
        """Whether another pass should send the events that certainly did not run.

        An event is sent again only if no later event of its channel may have run: resending it then cannot
        put it after one of them. The others keep their error.
        """
        blocked: set[str] = set()
        retry: list[int] = []
        for index in sorted(self._todo, reverse=True):
            channel = self._items[index][0]
            if self.outcomes[index] is None and channel not in blocked:
                retry.append(index)
            else:
                blocked.add(channel)
        self._todo = sorted(retry)
        return bool(self._todo)

    def finish(self) -> list[str | SSEHubError]:
        """Each event's id or error, in the order given."""
        outcomes: list[str | SSEHubError] = []
        for index, outcome in enumerate(self.outcomes):
            if outcome is None:  # still failing after the last pass, with an error that proves it did not run
                failure = self._retryable[index]
                outcome = failure if isinstance(failure, SSEHubError) else _translated(failure)
            outcomes.append(outcome)
        return outcomes


class _Nodes:
    """What the blocking and the asyncio node sets share: the target, the view of the cluster, the addresses."""

    def __init__(self, target: ClusterTarget, options: ClientOptions) -> None:
        self.target = target
        self.options = options
        self.topology = Topology({}, ())
        self.stale = True  # ask the cluster for its slot map before the next call
        self.loaded: set[tuple[str, int]] = set()  # masters that have the script (SCRIPT LOAD answered)

    def addresses(self) -> list[tuple[str, int]]:
        """Where to ask for the slot map: the masters known so far, then the seeds."""
        known = [(shard.host, shard.port) for shard in self.topology.shards.values()]
        return list(dict.fromkeys([*known, *self.target.nodes]))

    def adopt(self, reply: Any, host: str) -> bool:
        """Take a CLUSTER SLOTS reply as the new view if some master serves slots in it."""
        topology = topology_from_cluster_slots(reply, host)
        if not topology.shards:
            return False
        self.topology = topology
        self.stale = False
        return True


class ClusterNodes(_Nodes):
    """A blocking publisher's connections to a Redis Cluster: a pool per master, the slot map, pipelines.

    Built by :meth:`ssehub.Publisher.from_url` for ``redis+cluster://`` URLs; connects lazily. Thread-safe.
    """

    def __init__(self, target: ClusterTarget, options: ClientOptions) -> None:
        super().__init__(target, options)
        self._clients: dict[tuple[str, int], redis.Redis] = {}
        self._lock = threading.Lock()

    def _client(self, host: str, port: int) -> redis.Redis:
        with self._lock:
            client = self._clients.get((host, port))
            if client is None:
                client = self._clients[(host, port)] = connect_node_sync(self.target, host, port, self.options)
            return client

    def refresh(self) -> None:
        """Ask the known masters, then the seeds, for the slot map.

        Raises:
            BrokerUnavailableError: no node answered with one.
        """
        from redis.exceptions import RedisError

        error: BaseException | None = None
        for host, port in self.addresses():
            try:
                reply = self._client(host, port).execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
                if self.adopt(reply, host):
                    return
            except (RedisError, OSError) as exc:
                error = exc
        raise translate_error(error or RuntimeError("no master serves any slot"), "discover the cluster")

    def publish(self, script: ClusterPublishScript, items: Sequence[tuple[str, str, str]]) -> list[str | SSEHubError]:
        """Publish ``(channel, event, data)`` items; each event's id or error, in order (see :class:`ClusterBatch`)."""
        from redis.exceptions import RedisError

        batch = ClusterBatch(script, items, self.loaded)
        for _ in range(PASSES):
            if self.stale or batch.stale:
                try:
                    self.refresh()
                except BrokerUnavailableError as exc:
                    batch.abandon(exc)
                    break
                batch.stale = False
            for shard, calls in batch.calls(self.topology).items():
                client = self._client(shard.host, shard.port)
                for n, call in enumerate(calls):
                    pipe = client.pipeline(transaction=False)
                    for command in call.commands:
                        pipe.execute_command(*command)  # type: ignore[no-untyped-call]
                    try:
                        batch.record(call, pipe.execute(raise_on_error=False))
                    except (RedisError, OSError) as exc:
                        batch.fail(calls[n:], exc)
                        break
            self.stale = self.stale or batch.stale
            if not batch.again():
                break
        return batch.finish()

    def close(self) -> None:
        """Close every connection."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


class AsyncClusterNodes(_Nodes):
    """An asyncio publisher's connections to a Redis Cluster; as :class:`ClusterNodes`, masters in parallel."""

    def __init__(self, target: ClusterTarget, options: ClientOptions) -> None:
        super().__init__(target, options)
        self._clients: dict[tuple[str, int], redis.asyncio.Redis] = {}
        self._lock = asyncio.Lock()

    def _client(self, host: str, port: int) -> redis.asyncio.Redis:
        client = self._clients.get((host, port))
        if client is None:
            client = self._clients[(host, port)] = connect_node(self.target, host, port, self.options)
        return client

    async def refresh(self) -> None:
        """Ask the known masters, then the seeds, for the slot map (one refresh at a time).

        Raises:
            BrokerUnavailableError: no node answered with one.
        """
        from redis.exceptions import RedisError

        async with self._lock:
            error: BaseException | None = None
            for host, port in self.addresses():
                try:
                    reply = await self._client(host, port).execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
                    if self.adopt(reply, host):
                        return
                except (RedisError, OSError) as exc:
                    error = exc
            raise translate_error(error or RuntimeError("no master serves any slot"), "discover the cluster")

    async def publish(
        self, script: ClusterPublishScript, items: Sequence[tuple[str, str, str]]
    ) -> list[str | SSEHubError]:
        """Publish ``(channel, event, data)`` items, every master's at once; each event's id or error, in order."""
        batch = ClusterBatch(script, items, self.loaded)
        for _ in range(PASSES):
            if self.stale or batch.stale:
                try:
                    await self.refresh()
                except BrokerUnavailableError as exc:
                    batch.abandon(exc)
                    break
                batch.stale = False
            grouped = batch.calls(self.topology)
            await asyncio.gather(*(self._run(batch, shard, calls) for shard, calls in grouped.items()))
            self.stale = self.stale or batch.stale
            if not batch.again():
                break
        return batch.finish()

    async def _run(self, batch: ClusterBatch, shard: Shard, calls: list[ShardCall]) -> None:
        from redis.exceptions import RedisError

        client = self._client(shard.host, shard.port)
        for n, call in enumerate(calls):
            pipe = client.pipeline(transaction=False)
            for command in call.commands:
                pipe.execute_command(*command)
            try:
                batch.record(call, await pipe.execute(raise_on_error=False))
            except (RedisError, OSError) as exc:
                batch.fail(calls[n:], exc)
                return

    async def aclose(self) -> None:
        """Close every connection."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


def _translated(exc: BaseException) -> SSEHubError:
    """The ssehub error of a failed publish, with the redis-py error as its cause."""
    error = translate_error(exc, "publish")
    error.__cause__ = exc
    return error
