"""Connections to Redis, made in one place for the Redis and Cluster brokers and both publishers.

One factory, one set of options: the same timeouts, keepalive and retry policy for every client ssehub
builds, whether the URL names one server (``redis://``, ``rediss://`` for TLS, ``unix://``), Sentinels
(``redis+sentinel://``) or a Redis Cluster (``redis+cluster://``, ``rediss+cluster://`` for TLS: redis-py's
cluster client for the broker's commands, plain clients to single masters for its sharded pub/sub and for the
publishers, all with the URL's credentials and TLS options). redis-py is imported only when a client is built,
so that ``import ssehub`` works without the ``ssehub[redis]`` extra.

No retries inside redis-py, for any client: a publish retried after a timeout could store an event twice, and
the broker's pub/sub reader does its own reconnection (it must catch up from history, which redis-py's
resubscribe does not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from ssehub.exceptions import InvalidValueError, MissingDependencyError

if TYPE_CHECKING:
    import redis
    import redis.asyncio
    from redis.asyncio.cluster import RedisCluster

    from ssehub.brokers._cluster_layout import ClusterTarget, Shard

__all__ = [
    "ClientOptions",
    "RedisTarget",
    "connect_async",
    "connect_cluster",
    "connect_node",
    "connect_node_sync",
    "connect_shard",
    "connect_sync",
    "parse_redis_url",
    "require_redis",
]


def require_redis() -> None:
    """Raise MissingDependencyError unless redis-py is importable."""
    try:
        import redis  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("redis", "redis") from exc


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """How every client connects: pool size and the two timeouts (seconds)."""

    pool_size: int = 8
    socket_timeout: float = 5.0
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.pool_size < 1 or self.socket_timeout <= 0 or self.connect_timeout <= 0:
            raise InvalidValueError("pool_size must be >= 1 and the timeouts > 0")

    def connection_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of every connection (pool size apart)."""
        return {
            "decode_responses": True,
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.connect_timeout,
            "socket_keepalive": True,
        }

    def sentinel_kwargs(self, target: RedisTarget) -> dict[str, Any]:
        """The keyword arguments of the connections to the Sentinels themselves."""
        return {
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.connect_timeout,
            **target.sentinel_kwargs,
        }


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where to connect, parsed from a broker URL.

    ``redis://`` and ``rediss://`` URLs are handed to redis-py as they are (user, password, db and query
    options included). ``redis+sentinel://[user:pass@]host:port[,host:port...]/service_name[/db]`` names
    Sentinel nodes; the credentials are those of the Redis master. Query options ``sentinel_username`` and
    ``sentinel_password`` authenticate to the Sentinels themselves.
    """

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    service_name: str = ""
    master_kwargs: dict[str, Any] = field(default_factory=dict)
    sentinel_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def is_sentinel(self) -> bool:
        """Whether the URL names Sentinel nodes."""
        return bool(self.sentinels)

    def describe(self) -> str:
        """The target without credentials, for logs and /health."""
        if self.is_sentinel:
            hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"redis+sentinel://{hosts}/{self.service_name}"
        parts = urlsplit(self.url)
        host = parts.hostname or "localhost"
        return f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path}"


def parse_redis_url(url: str) -> RedisTarget:
    """Parse a broker URL into a RedisTarget.

    Raises:
        InvalidValueError: the URL is not a Redis URL ssehub understands.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in {"redis", "rediss", "unix"}:
        return RedisTarget(url=url)
    if scheme != "redis+sentinel":
        raise InvalidValueError("a Redis broker URL starts with redis://, rediss:// or redis+sentinel://")
    rest = url.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    master: dict[str, Any] = {}
    if userinfo:
        user, has_password, password = userinfo.partition(":")
        if has_password:
            master["password"] = unquote(password)
            if user:
                master["username"] = unquote(user)
        else:
            master["password"] = unquote(user)
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise InvalidValueError(f"redis+sentinel:// URL: expected host:port, got {item.strip()[:60]!r}")
        sentinels.append((host.strip("[]"), int(port)))
    segments = [unquote(s) for s in path.split("/") if s]
    if not segments or len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
        raise InvalidValueError("redis+sentinel:// URL: expected /service_name or /service_name/db after the hosts")
    if len(segments) == 2:
        master["db"] = int(segments[1])
    options = {key: values[-1] for key, values in parse_qs(query).items()}
    sentinel_auth: dict[str, Any] = {}
    if "sentinel_password" in options:
        sentinel_auth["password"] = options.pop("sentinel_password")
    if "sentinel_username" in options:
        sentinel_auth["username"] = options.pop("sentinel_username")
    if options:
        raise InvalidValueError(f"redis+sentinel:// URL: unknown options {sorted(options)}")
    return RedisTarget(
        url=url,
        sentinels=tuple(sentinels),
        service_name=segments[0],
        master_kwargs=master,
        sentinel_kwargs=sentinel_auth,
    )


def connect_async(target: RedisTarget, options: ClientOptions) -> tuple[redis.asyncio.Redis, list[redis.asyncio.Redis]]:
    """A ``redis.asyncio`` client for ``target`` with a pool of ``options.pool_size`` connections.

    Returns:
        The client, and the Sentinel clients it depends on (close them with it).
    """
    from redis.asyncio import ConnectionPool, Redis
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel
    from redis.backoff import NoBackoff

    kwargs = {**options.connection_kwargs(), "retry": Retry(NoBackoff(), 0)}
    if target.is_sentinel:
        sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=options.sentinel_kwargs(target))  # type: ignore[no-untyped-call]
        client = sentinel.master_for(
            target.service_name, max_connections=options.pool_size, **kwargs, **target.master_kwargs
        )
        return client, list(sentinel.sentinels)
    pool = ConnectionPool.from_url(target.url, max_connections=options.pool_size, **kwargs)
    client = Redis(connection_pool=pool, retry=kwargs["retry"])
    client.auto_close_connection_pool = True  # the client owns its pool: aclose() closes its connections
    return client, []


def connect_sync(target: RedisTarget, options: ClientOptions) -> tuple[redis.Redis, list[redis.Redis]]:
    """A blocking ``redis.Redis`` client for ``target``; same options and return value as :func:`connect_async`."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    from redis.sentinel import Sentinel

    kwargs = {**options.connection_kwargs(), "retry": Retry(NoBackoff(), 0)}
    if target.is_sentinel:
        sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=options.sentinel_kwargs(target))  # type: ignore[no-untyped-call]
        client = sentinel.master_for(  # type: ignore[no-untyped-call]
            target.service_name, max_connections=options.pool_size, **kwargs, **target.master_kwargs
        )
        return client, list(sentinel.sentinels)
    pool = redis.ConnectionPool.from_url(target.url, max_connections=options.pool_size, **kwargs)
    client = redis.Redis(connection_pool=pool, retry=kwargs["retry"])
    client.auto_close_connection_pool = True  # the client owns its pool: close() closes its connections
    return client, []


def connect_cluster(target: ClusterTarget, options: ClientOptions) -> RedisCluster:
    """The cluster broker's command client: redis-py's cluster client, ``options.pool_size`` connections per node."""
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    # No retries of a failed command inside redis-py (a retried publish could store an event twice);
    # MOVED/ASK redirections are still followed: they mean the command did not run.
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        max_connections=options.pool_size,
        retry=Retry(NoBackoff(), 0),
        require_full_coverage=False,
        **options.connection_kwargs(),
        **target.client_kwargs(),
    )


def connect_shard(target: ClusterTarget, shard: Shard, options: ClientOptions) -> redis.asyncio.Redis:
    """A plain client to one shard's master, for its sharded pub/sub connection (2: room for one closing)."""
    return connect_node(target, shard.host, shard.port, options, max_connections=2)


def connect_node(
    target: ClusterTarget, host: str, port: int, options: ClientOptions, *, max_connections: int = 0
) -> redis.asyncio.Redis:
    """A plain ``redis.asyncio`` client to one cluster node (``max_connections``: default ``options.pool_size``)."""
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Redis(
        host=host,
        port=port,
        max_connections=max_connections or options.pool_size,
        retry=Retry(NoBackoff(), 0),
        **options.connection_kwargs(),
        **target.client_kwargs(),
    )


def connect_node_sync(target: ClusterTarget, host: str, port: int, options: ClientOptions) -> redis.Redis:
    """A blocking client to one cluster node, with a pool of ``options.pool_size`` connections."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(
        host=host,
        port=port,
        max_connections=options.pool_size,
        retry=Retry(NoBackoff(), 0),
        **options.connection_kwargs(),
        **target.client_kwargs(),
    )
