"""Publish events from any process straight to Redis, without going through a hub's HTTP API.

:class:`Publisher` (blocking, for workers and scripts) and :class:`AsyncPublisher` (asyncio) run the same
Lua script as the Redis broker (:class:`~ssehub.brokers.redis.PublishScript`), so ids, trimming and
notifications are identical to a publish through a hub: every hub on that Redis delivers the event to its
subscribers at once. Their clients come from the same factory as the broker's
(``ssehub/brokers/redis_client.py``): same timeouts, no retries.

On a Redis Cluster (``redis+cluster://host:port,host:port``, ``rediss+cluster://`` for TLS) they run the
cluster broker's script instead (:class:`~ssehub.brokers._cluster_publish.ClusterPublishScript`,
``cluster_publish.lua``) on the master of each channel's slot, with ``Publisher.from_url`` taking the hubs' URL
as it is: the event gets the next id of that shard's order, is stored and announced through sharded
pub/sub (SPUBLISH) exactly as a publish through a hub on that cluster. They ask the cluster for its slot map
when they first publish and again whenever a master answers that it no longer owns a slot.

Use the same ``prefix``, ``history_size``, ``history_ttl`` and ``max_channels`` as the hubs (the script
trims with the values its caller passes)::

    with Publisher.from_url("redis://localhost:6379/0") as publisher:
        publisher.publish_download_progress("dl-42", 37.5, speed="1.2 MB/s")
        publisher.publish_many([("queue:updates", "queue_update", {"size": 3}), ("x", "e", [1, 2])])

``publish_many`` sends many events per round trip (``publish_batch.lua``, up to ``MAX_BATCH`` events per call):
each event is still stored before it is announced and succeeds or fails on its own, in the order given. On a
cluster it sends each shard's events as one pipeline of script calls (one round trip per shard, up to
``MAX_BATCH`` events each; the asyncio publisher reaches all shards at once); the events of one channel keep
their order, and a shard that cannot be reached fails only its own events.

The id a publish returns is the event's id in its order: ``<ms>-<seq>``, as ``POST /publish`` answers. On a
cluster that is the id within the channel's shard, not a position a client can resume from.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

from ssehub.brokers._cluster_layout import ClusterTarget, is_cluster_url, parse_cluster_url
from ssehub.brokers._cluster_publish import AsyncClusterNodes, ClusterNodes, ClusterPublishScript
from ssehub.brokers._redis_layout import batch_outcomes
from ssehub.brokers.redis import DEFAULT_PREFIX, PublishScript
from ssehub.brokers.redis_client import (
    ClientOptions,
    RedisTarget,
    connect_async,
    connect_sync,
    parse_redis_url,
    require_redis,
)
from ssehub.events import dump_json, validate_channel, validate_event_type
from ssehub.exceptions import BrokerUnavailableError, InvalidValueError, PublishManyError, SSEHubError

if TYPE_CHECKING:
    import redis
    import redis.asyncio
    from redis.commands.core import AsyncScript, Script

__all__ = ["AsyncPublisher", "Publisher"]

DOWNLOAD_CHANNEL, DOWNLOAD_EVENT = "download:updates", "download_progress"
QUEUE_CHANNEL, QUEUE_EVENT = "queue:updates", "queue_update"
SYSTEM_CHANNEL, SYSTEM_EVENT = "system:notifications", "system_notification"

ClientT = TypeVar("ClientT", "redis.Redis", "redis.asyncio.Redis")
NodesT = TypeVar("NodesT", ClusterNodes, AsyncClusterNodes)


class _Base(Generic[ClientT, NodesT]):
    """What both publishers share: construction, validation, serialization and the helper events' shapes.

    Args:
        client: a redis-py client (``decode_responses=True``), or the cluster connections :meth:`from_url`
            builds for a ``redis+cluster://`` URL; :meth:`from_url` builds either.
        prefix, history_size, history_ttl, max_channels: as the hubs on this Redis use them.
        pool_size: publishes in flight at once (the client's pool should allow as many connections);
            more wait for a free one.
        wait_timeout: seconds a publish may wait for a free connection before BrokerUnavailableError.
    """

    def __init__(
        self,
        client: ClientT | NodesT,
        *,
        prefix: str = DEFAULT_PREFIX,
        history_size: int = 1000,
        history_ttl: float = 3600.0,
        max_channels: int = 10000,
        pool_size: int = 8,
        wait_timeout: float = 10.0,
    ) -> None:
        self._publishing = PublishScript(prefix, history_size, history_ttl, max_channels)
        self._nodes: NodesT | None = None
        self._cluster_publishing: ClusterPublishScript | None = None
        if isinstance(client, (ClusterNodes, AsyncClusterNodes)):
            self._nodes = client
            self._cluster_publishing = ClusterPublishScript(prefix, history_size, history_ttl, max_channels)
        else:
            self._client: ClientT = client
        self._helpers: list[ClientT] = []  # Sentinel clients that from_url made, closed with ours
        self._slot_timeout = wait_timeout
        self._pool_size = pool_size

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        history_size: int = 1000,
        history_ttl: float = 3600.0,
        max_channels: int = 10000,
        socket_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        pool_size: int = 8,
    ) -> Self:
        """Connect to ``redis://``, ``rediss://``, ``redis+sentinel://``, ``redis+cluster://`` or
        ``rediss+cluster://`` (the brokers' URL forms), lazily. On a cluster, ``pool_size`` connections per master.

        Raises:
            MissingDependencyError: redis-py is not installed.
            InvalidValueError: a bad URL or setting.
        """
        require_redis()
        options = ClientOptions(pool_size, socket_timeout, connect_timeout)
        client: ClientT | NodesT
        helpers: list[ClientT] = []
        if is_cluster_url(url):
            client = cls._connect_cluster(parse_cluster_url(url), options)
        else:
            client, helpers = cls._connect(parse_redis_url(url), options)
        publisher = cls(
            client,
            prefix=prefix,
            history_size=history_size,
            history_ttl=history_ttl,
            max_channels=max_channels,
            pool_size=pool_size,
            wait_timeout=socket_timeout + connect_timeout,
        )
        publisher._helpers = helpers
        return publisher

    @staticmethod
    def _connect(target: RedisTarget, options: ClientOptions) -> tuple[ClientT, list[ClientT]]:
        raise NotImplementedError

    @staticmethod
    def _connect_cluster(target: ClusterTarget, options: ClientOptions) -> NodesT:
        raise NotImplementedError

    @staticmethod
    def _item(channel: str, event: str, data: Any) -> tuple[str, str, str]:
        validate_channel(channel)
        validate_event_type(event)
        # dump_json raises InvalidValueError (code INVALID_DATA) for NaN, infinities and non-JSON values.
        return channel, event, dump_json(data)

    def _call_args(self, channel: str, event: str, data: Any) -> tuple[list[str], list[str | int]]:
        return self._publishing.call(*self._item(channel, event, data))

    def _items(self, events: Iterable[tuple[str, str, Any]]) -> list[tuple[str, str, str]]:
        """Validate and serialize every event first (nothing is sent if one is bad)."""
        return [self._item(channel, event, data) for channel, event, data in events]

    def _batches(self, events: Iterable[tuple[str, str, Any]]) -> list[tuple[list[str], list[str | int], int]]:
        """Validated events as KEYS/ARGV per script call."""
        return self._publishing.batch_calls(self._items(events))

    @staticmethod
    def _one(outcomes: list[str | SSEHubError]) -> str:
        """The id of a single event published on a cluster, or its error raised."""
        (outcome,) = outcomes
        if isinstance(outcome, SSEHubError):
            raise outcome
        return outcome

    @staticmethod
    def _finish(outcomes: list[str | SSEHubError], total: int, error: SSEHubError | None) -> list[str]:
        """The ids, or PublishManyError when any event was not stored (``error`` stopped the calls left)."""
        if error is not None:
            outcomes = outcomes + [error] * (total - len(outcomes))
        if all(isinstance(outcome, str) for outcome in outcomes):
            return [str(outcome) for outcome in outcomes]
        raise PublishManyError(outcomes)

    @staticmethod
    def _download_progress(download_id: str | int, progress: float, extra: Mapping[str, Any]) -> dict[str, Any]:
        if isinstance(progress, bool) or not isinstance(progress, (int, float)) or not math.isfinite(progress):
            raise InvalidValueError(f"progress must be a finite number, got {progress!r}")
        return {"download_id": download_id, "progress": progress, **extra}

    @staticmethod
    def _system_notification(message: str, level: str, extra: Mapping[str, Any]) -> dict[str, Any]:
        return {"message": message, "level": level, **extra}


class Publisher(_Base["redis.Redis", ClusterNodes]):
    """A blocking publisher on a redis-py client. Safe to share between threads (redis-py pools are).

    Arguments as :class:`_Base`; build it with :meth:`from_url`, or pass a ``redis.Redis``.
    """

    def __init__(self, client: redis.Redis | ClusterNodes, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self._slots = threading.BoundedSemaphore(self._pool_size)
        if self._nodes is None:
            self._script: Script = self._client.register_script(self._publishing.source)
            self._batch_script: Script = self._client.register_script(self._publishing.batch_source)

    @staticmethod
    def _connect(target: RedisTarget, options: ClientOptions) -> tuple[redis.Redis, list[redis.Redis]]:
        return connect_sync(target, options)

    @staticmethod
    def _connect_cluster(target: ClusterTarget, options: ClientOptions) -> ClusterNodes:
        return ClusterNodes(target, options)

    def _on_cluster(self, items: list[tuple[str, str, str]]) -> list[str | SSEHubError]:
        """Each event's id or error, published on the cluster (one slot for the whole call)."""
        assert self._nodes is not None
        assert self._cluster_publishing is not None
        if not self._slots.acquire(timeout=self._slot_timeout):
            error = BrokerUnavailableError(f"no free Redis connection within {self._slot_timeout:g}s")
            return [error] * len(items)
        try:
            return self._nodes.publish(self._cluster_publishing, items)
        finally:
            self._slots.release()

    def publish(self, channel: str, event: str, data: Any) -> str:
        """Publish ``data`` (any JSON-serializable value) and return the event's id.

        Raises:
            InvalidValueError: a bad channel, event type or data.
            BrokerUnavailableError: Redis cannot be reached; nothing was stored.
            ChannelLimitError: a new channel beyond ``max_channels``.
        """
        from redis.exceptions import RedisError

        if self._nodes is not None:
            return self._one(self._on_cluster([self._item(channel, event, data)]))
        keys, args = self._call_args(channel, event, data)
        # More concurrent publishes than connections wait for one (bounded) instead of failing in redis-py.
        if not self._slots.acquire(timeout=self._slot_timeout):
            raise BrokerUnavailableError(f"no free Redis connection within {self._slot_timeout:g}s")
        try:
            return str(self._script(keys=keys, args=args, client=self._client))
        except (RedisError, OSError) as exc:
            raise self._publishing.error(exc) from exc
        finally:
            self._slots.release()

    def publish_many(self, events: Iterable[tuple[str, str, Any]]) -> list[str]:
        """Publish ``(channel, event, data)`` items in order, many per round trip; return their ids.

        Each event is stored and announced atomically and fails on its own: one refused event (a new channel
        beyond ``max_channels``) does not stop or reorder the others. The list as a whole is not atomic.

        Raises:
            InvalidValueError: a bad channel, event type or data (checked for all before anything is sent).
            PublishManyError: some events were not stored; ``outcomes`` has each event's id or error. If Redis
                could not be reached, the events not yet sent carry that BrokerUnavailableError.
        """
        from redis.exceptions import RedisError

        if self._nodes is not None:
            items = self._items(events)
            return self._finish(self._on_cluster(items) if items else [], len(items), None)
        calls = self._batches(events)
        total = sum(count for _keys, _args, count in calls)
        outcomes: list[str | SSEHubError] = []
        error: SSEHubError | None = None
        for keys, args, count in calls:
            if not self._slots.acquire(timeout=self._slot_timeout):
                error = BrokerUnavailableError(f"no free Redis connection within {self._slot_timeout:g}s")
                break
            try:
                outcomes += batch_outcomes(self._batch_script(keys=keys, args=args, client=self._client), count)
            except (RedisError, OSError) as exc:
                error = self._publishing.error(exc)
                break
            except SSEHubError as exc:
                error = exc
                break
            finally:
                self._slots.release()
        return self._finish(outcomes, total, error)

    def publish_download_progress(self, download_id: str | int, progress: float, **extra: Any) -> str:
        """``download_progress`` on ``download:updates``: ``{"download_id", "progress", **extra}``."""
        return self.publish(DOWNLOAD_CHANNEL, DOWNLOAD_EVENT, self._download_progress(download_id, progress, extra))

    def publish_queue_update(self, **fields: Any) -> str:
        """``queue_update`` on ``queue:updates`` with ``fields`` as the data object."""
        return self.publish(QUEUE_CHANNEL, QUEUE_EVENT, fields)

    def publish_system_notification(self, message: str, level: str = "info", **extra: Any) -> str:
        """``system_notification`` on ``system:notifications``: ``{"message", "level", **extra}``."""
        return self.publish(SYSTEM_CHANNEL, SYSTEM_EVENT, self._system_notification(message, level, extra))

    def close(self) -> None:
        """Close the client's connections."""
        if self._nodes is not None:
            self._nodes.close()
            return
        for client in (self._client, *self._helpers):
            client.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncPublisher(_Base["redis.asyncio.Redis", AsyncClusterNodes]):
    """An asyncio publisher on a ``redis.asyncio`` client; same arguments as :class:`Publisher`."""

    def __init__(self, client: redis.asyncio.Redis | AsyncClusterNodes, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self._slots = asyncio.Semaphore(self._pool_size)
        if self._nodes is None:
            self._script: AsyncScript = self._client.register_script(self._publishing.source)
            self._batch_script: AsyncScript = self._client.register_script(self._publishing.batch_source)

    @staticmethod
    def _connect(target: RedisTarget, options: ClientOptions) -> tuple[redis.asyncio.Redis, list[redis.asyncio.Redis]]:
        return connect_async(target, options)

    @staticmethod
    def _connect_cluster(target: ClusterTarget, options: ClientOptions) -> AsyncClusterNodes:
        return AsyncClusterNodes(target, options)

    async def _on_cluster(self, items: list[tuple[str, str, str]]) -> list[str | SSEHubError]:
        """Each event's id or error, published on the cluster (one slot for the whole call)."""
        assert self._nodes is not None
        assert self._cluster_publishing is not None
        try:
            async with asyncio.timeout(self._slot_timeout):
                await self._slots.acquire()
        except TimeoutError:
            error = BrokerUnavailableError(f"no free Redis connection within {self._slot_timeout:g}s")
            return [error] * len(items)
        try:
            return await self._nodes.publish(self._cluster_publishing, items)
        finally:
            self._slots.release()

    async def publish(self, channel: str, event: str, data: Any) -> str:
        """Publish ``data`` and return the event's id (see :meth:`Publisher.publish`)."""
        from redis.exceptions import RedisError

        if self._nodes is not None:
            return self._one(await self._on_cluster([self._item(channel, event, data)]))
        keys, args = self._call_args(channel, event, data)
        # More concurrent publishes than connections wait for one (bounded) instead of failing in redis-py.
        try:
            async with asyncio.timeout(self._slot_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise BrokerUnavailableError(f"no free Redis connection within {self._slot_timeout:g}s") from None
        try:
            return str(await self._script(keys=keys, args=args, client=self._client))
        except (RedisError, OSError) as exc:
            raise self._publishing.error(exc) from exc
        finally:
            self._slots.release()

    async def publish_many(self, events: Iterable[tuple[str, str, Any]]) -> list[str]:
        """Publish ``(channel, event, data)`` items in order, many per round trip (see :meth:`Publisher.publish_many`).

        Raises:
            InvalidValueError: a bad channel, event type or data (nothing is sent).
            PublishManyError: some events were not stored; ``outcomes`` has each event's id or error.
        """
        from redis.exceptions import RedisError

        if self._nodes is not None:
            items = self._items(events)
            return self._finish(await self._on_cluster(items) if items else [], len(items), None)
        calls = self._batches(events)
        total = sum(count for _keys, _args, count in calls)
        outcomes: list[str | SSEHubError] = []
        error: SSEHubError | None = None
        for keys, args, count in calls:
            try:
                async with asyncio.timeout(self._slot_timeout):
                    await self._slots.acquire()
            except TimeoutError:
                error = BrokerUnavailableError(f"no free Redis connection within {self._slot_timeout:g}s")
                break
            try:
                outcomes += batch_outcomes(await self._batch_script(keys=keys, args=args, client=self._client), count)
            except (RedisError, OSError) as exc:
                error = self._publishing.error(exc)
                break
            except SSEHubError as exc:
                error = exc
                break
            finally:
                self._slots.release()
        return self._finish(outcomes, total, error)

    async def publish_download_progress(self, download_id: str | int, progress: float, **extra: Any) -> str:
        """``download_progress`` on ``download:updates``: ``{"download_id", "progress", **extra}``."""
        return await self.publish(
            DOWNLOAD_CHANNEL, DOWNLOAD_EVENT, self._download_progress(download_id, progress, extra)
        )

    async def publish_queue_update(self, **fields: Any) -> str:
        """``queue_update`` on ``queue:updates`` with ``fields`` as the data object."""
        return await self.publish(QUEUE_CHANNEL, QUEUE_EVENT, fields)

    async def publish_system_notification(self, message: str, level: str = "info", **extra: Any) -> str:
        """``system_notification`` on ``system:notifications``: ``{"message", "level", **extra}``."""
        return await self.publish(SYSTEM_CHANNEL, SYSTEM_EVENT, self._system_notification(message, level, extra))

    async def aclose(self) -> None:
        """Close the client's connections."""
        if self._nodes is not None:
            await self._nodes.aclose()
            return
        for client in (self._client, *self._helpers):
            await client.aclose()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
