"""Publish events from any process straight to Redis, without going through a hub's HTTP API.

:class:`Publisher` (blocking, for workers and scripts) and :class:`AsyncPublisher` (asyncio) run the same
Lua script as the Redis broker (:class:`~ssehub.brokers.redis.PublishScript`), so ids, trimming and
notifications are identical to a publish through a hub: every hub on that Redis delivers the event to its
subscribers at once. Their clients come from the same factory as the broker's
(``ssehub/brokers/redis_client.py``): same timeouts, no retries.

Use the same ``prefix``, ``history_size``, ``history_ttl`` and ``max_channels`` as the hubs (the script
trims with the values its caller passes)::

    with Publisher.from_url("redis://localhost:6379/0") as publisher:
        publisher.publish_download_progress("dl-42", 37.5, speed="1.2 MB/s")
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

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
from ssehub.exceptions import BrokerUnavailableError, InvalidValueError

if TYPE_CHECKING:
    import redis
    import redis.asyncio
    from redis.commands.core import AsyncScript, Script

__all__ = ["AsyncPublisher", "Publisher"]

DOWNLOAD_CHANNEL, DOWNLOAD_EVENT = "download:updates", "download_progress"
QUEUE_CHANNEL, QUEUE_EVENT = "queue:updates", "queue_update"
SYSTEM_CHANNEL, SYSTEM_EVENT = "system:notifications", "system_notification"

ClientT = TypeVar("ClientT", "redis.Redis", "redis.asyncio.Redis")


class _Base(Generic[ClientT]):
    """What both publishers share: construction, validation, serialization and the helper events' shapes.

    Args:
        client: a redis-py client (``decode_responses=True``); :meth:`from_url` builds one.
        prefix, history_size, history_ttl, max_channels: as the hubs on this Redis use them.
        pool_size: publishes in flight at once (the client's pool should allow as many connections);
            more wait for a free one.
        wait_timeout: seconds a publish may wait for a free connection before BrokerUnavailableError.
    """

    def __init__(
        self,
        client: ClientT,
        *,
        prefix: str = DEFAULT_PREFIX,
        history_size: int = 1000,
        history_ttl: float = 3600.0,
        max_channels: int = 10000,
        pool_size: int = 8,
        wait_timeout: float = 10.0,
    ) -> None:
        self._publishing = PublishScript(prefix, history_size, history_ttl, max_channels)
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
        """Connect to ``redis://``, ``rediss://`` or ``redis+sentinel://`` (the broker's URL forms), lazily.

        Raises:
            MissingDependencyError: redis-py is not installed.
            InvalidValueError: a bad URL or setting.
        """
        require_redis()
        client, helpers = cls._connect(parse_redis_url(url), ClientOptions(pool_size, socket_timeout, connect_timeout))
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

    def _call_args(self, channel: str, event: str, data: Any) -> tuple[list[str], list[str | int]]:
        validate_channel(channel)
        validate_event_type(event)
        # dump_json raises InvalidValueError (code INVALID_DATA) for NaN, infinities and non-JSON values.
        return self._publishing.call(channel, event, dump_json(data))

    @staticmethod
    def _download_progress(download_id: str | int, progress: float, extra: Mapping[str, Any]) -> dict[str, Any]:
        if isinstance(progress, bool) or not isinstance(progress, (int, float)) or not math.isfinite(progress):
            raise InvalidValueError(f"progress must be a finite number, got {progress!r}")
        return {"download_id": download_id, "progress": progress, **extra}

    @staticmethod
    def _system_notification(message: str, level: str, extra: Mapping[str, Any]) -> dict[str, Any]:
        return {"message": message, "level": level, **extra}


class Publisher(_Base["redis.Redis"]):
    """A blocking publisher on a redis-py client. Safe to share between threads (redis-py pools are).

    Arguments as :class:`_Base`; build it with :meth:`from_url`, or pass a ``redis.Redis``.
    """

    def __init__(self, client: redis.Redis, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self._slots = threading.BoundedSemaphore(self._pool_size)
        self._script: Script = client.register_script(self._publishing.source)

    @staticmethod
    def _connect(target: RedisTarget, options: ClientOptions) -> tuple[redis.Redis, list[redis.Redis]]:
        return connect_sync(target, options)

    def publish(self, channel: str, event: str, data: Any) -> str:
        """Publish ``data`` (any JSON-serializable value) and return the event's id.

        Raises:
            InvalidValueError: a bad channel, event type or data.
            BrokerUnavailableError: Redis cannot be reached; nothing was stored.
            ChannelLimitError: a new channel beyond ``max_channels``.
        """
        from redis.exceptions import RedisError

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
        for client in (self._client, *self._helpers):
            client.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncPublisher(_Base["redis.asyncio.Redis"]):
    """An asyncio publisher on a ``redis.asyncio`` client; same arguments as :class:`Publisher`."""

    def __init__(self, client: redis.asyncio.Redis, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self._slots = asyncio.Semaphore(self._pool_size)
        self._script: AsyncScript = client.register_script(self._publishing.source)

    @staticmethod
    def _connect(target: RedisTarget, options: ClientOptions) -> tuple[redis.asyncio.Redis, list[redis.asyncio.Redis]]:
        return connect_async(target, options)

    async def publish(self, channel: str, event: str, data: Any) -> str:
        """Publish ``data`` and return the event's id (see :meth:`Publisher.publish`)."""
        from redis.exceptions import RedisError

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
        for client in (self._client, *self._helpers):
            await client.aclose()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
