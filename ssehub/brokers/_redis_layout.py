"""What the Redis broker and the publishers share: key names, Lua scripts, URL parsing, error translation.

The layout is documented for other languages in ``docs/redis-layout.md``; change both together.
Every key carries the hash tag ``{<prefix>}`` so that all of them live in one Redis Cluster slot: the
publish script touches the global ``last-id`` key and a channel's stream in one atomic step.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from ssehub.events import Event, EventId
from ssehub.exceptions import (
    BrokerUnavailableError,
    ChannelLimitError,
    InvalidValueError,
    MissingDependencyError,
    SSEHubError,
)

DEFAULT_PREFIX = "ssehub"
#: The error text the publish script starts with when a new channel would exceed ``max_channels``.
CHANNEL_LIMIT_MARKER = "SSEHUB_CHANNEL_LIMIT"
#: What ``publish_batch.lua`` answers, instead of an id, for an event that Redis failed to store.
BATCH_ERROR_MARKER = "SSEHUB_ERROR"
#: Events per ``publish_batch.lua`` call: a script blocks Redis while it runs, so a long list goes in several
#: calls (each event is atomic; a list longer than this is not one atomic unit).
MAX_BATCH = 256
if TYPE_CHECKING:
    from redis.asyncio import Redis

_PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}")


def require_redis() -> None:
    """Raise MissingDependencyError unless redis-py is importable."""
    try:
        import redis  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("redis", "redis") from exc


@cache
def load_script(name: str) -> str:
    """A Lua script shipped as package data in ``ssehub/brokers/lua``, preceded by the shared ``_lib.lua``."""
    folder = resources.files("ssehub.brokers") / "lua"
    library = (folder / "_lib.lua").read_text(encoding="utf-8")
    return library + "\n" + (folder / name).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class RedisLayout:
    """Key and pub/sub channel names under one prefix.

    Raises:
        InvalidValueError: the prefix is empty, too long or contains characters other than
            ``A-Z a-z 0-9 _ . : -`` (braces would break the Cluster hash tag).
    """

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str) or _PREFIX_RE.fullmatch(self.prefix) is None:
            raise InvalidValueError(
                f"invalid Redis key prefix {str(self.prefix)[:70]!r}: use 1-64 characters from A-Z a-z 0-9 _ . : -"
            )

    @property
    def tag(self) -> str:
        """The hash-tagged prefix every key starts with."""
        return "{" + self.prefix + "}"

    @property
    def last_id(self) -> str:
        """The last issued id (string)."""
        return self.tag + ":last-id"

    @property
    def floor(self) -> str:
        """Ids below this one are unknown to this Redis (string)."""
        return self.tag + ":floor"

    @property
    def channels(self) -> str:
        """The channels with history (sorted set scored by the ms of their last publish)."""
        return self.tag + ":channels"

    @property
    def stream_prefix(self) -> str:
        """What a channel's stream key starts with."""
        return self.tag + ":stream:"

    @property
    def notify_prefix(self) -> str:
        """What a channel's pub/sub channel starts with."""
        return self.tag + ":notify:"

    def stream(self, channel: str) -> str:
        """The stream key holding a channel's history."""
        return self.stream_prefix + channel

    def notify(self, channel: str) -> str:
        """The pub/sub channel carrying a channel's live notifications."""
        return self.notify_prefix + channel


@dataclass(frozen=True, slots=True)
class PublishOptions:
    """The retention arguments every publisher passes to the script, so all of them trim alike."""

    history_size: int = 1000
    history_ttl: float = 3600.0
    max_channels: int = 10000

    def __post_init__(self) -> None:
        if self.history_size < 1 or self.history_ttl <= 0 or self.max_channels < 1:
            raise InvalidValueError("history_size and max_channels must be >= 1 and history_ttl > 0")

    @property
    def ttl_ms(self) -> int:
        """The history ttl in whole milliseconds (at least 1)."""
        return max(1, int(self.history_ttl * 1000))


def publish_call(
    layout: RedisLayout, options: PublishOptions, channel: str, event: str, data: str
) -> tuple[list[str], list[str | int]]:
    """The KEYS and ARGV of ``publish.lua`` for one event."""
    keys = [layout.last_id, layout.floor, layout.channels, layout.stream(channel)]
    args: list[str | int] = [
        channel,
        event,
        data,
        options.history_size,
        options.ttl_ms,
        options.max_channels,
        layout.notify(channel),
        layout.stream_prefix,
    ]
    return keys, args


def publish_batch_call(
    layout: RedisLayout, options: PublishOptions, items: Sequence[tuple[str, str, str]]
) -> tuple[list[str], list[str | int]]:
    """The KEYS and ARGV of ``publish_batch.lua`` for ``(channel, event, data)`` items (at most MAX_BATCH)."""
    keys = [layout.last_id, layout.floor, layout.channels]
    args: list[str | int] = [
        options.history_size,
        options.ttl_ms,
        options.max_channels,
        layout.notify_prefix,
        layout.stream_prefix,
    ]
    for channel, event, data in items:
        keys.append(layout.stream(channel))
        args += (channel, event, data)
    return keys, args


def batch_outcomes(results: Sequence[Any], count: int) -> list[str | SSEHubError]:
    """Each event's id, or the ssehub error that refused it, from ``publish_batch.lua``'s answer.

    Raises:
        BrokerUnavailableError: the answer does not have one entry per event.
    """
    if not isinstance(results, list) or len(results) != count:
        raise BrokerUnavailableError(f"Redis answered a batch of {count} events with {str(results)[:80]!r}")
    outcomes: list[str | SSEHubError] = []
    for result in results:
        text = str(result)
        if text.startswith(CHANNEL_LIMIT_MARKER):
            outcomes.append(_channel_limit_error(text))
        elif text.startswith(BATCH_ERROR_MARKER):
            reason = text[len(BATCH_ERROR_MARKER) :].strip()[:200]
            outcomes.append(BrokerUnavailableError(f"Redis failed to publish: {reason}"))
        else:
            outcomes.append(text)
    return outcomes


def parse_notification(layout: RedisLayout, pubsub_channel: str, payload: str) -> Event:
    """Turn a pub/sub notification (``<id>\\n<event>\\n<data>``) back into an Event.

    Raises:
        ValueError: the message does not follow the layout (another writer on our channels).
    """
    if not pubsub_channel.startswith(layout.notify_prefix):
        raise ValueError(f"unexpected pub/sub channel {pubsub_channel[:80]!r}")
    # Ids and event types cannot contain LF, so the first two LFs split the fields; data may hold more.
    id_text, event, data = payload.split("\n", 2)
    return Event(EventId.parse(id_text), pubsub_channel[len(layout.notify_prefix) :], event, data)


def translate_error(exc: BaseException, action: str) -> SSEHubError:
    """The ssehub exception for a redis-py or OS error raised while doing ``action``."""
    text = str(exc)
    if text.startswith(CHANNEL_LIMIT_MARKER):
        return _channel_limit_error(text)
    return BrokerUnavailableError(f"Redis failed to {action}: {type(exc).__name__}: {text[:200]}")


def _channel_limit_error(text: str) -> ChannelLimitError:
    return ChannelLimitError(text[len(CHANNEL_LIMIT_MARKER) :].strip() + " (SSEHUB_MAX_CHANNELS)")


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


def events_from_entries(channel: str, entries: list[Any]) -> list[Event]:
    """Events from XRANGE entries (``[id, [field, value, ...]]``, decoded to str)."""
    events: list[Event] = []
    for entry_id, fields in entries:
        values = dict(zip(fields[::2], fields[1::2], strict=True))
        events.append(Event(EventId.parse(entry_id), channel, values["event"], values["data"]))
    return events


def make_async_clients(
    target: RedisTarget, pool_size: int, socket_timeout: float, connect_timeout: float
) -> tuple[Redis, Redis, list[Redis]]:
    """The broker's command client (``pool_size`` connections), its pub/sub client, and Sentinel clients."""
    from redis.asyncio import ConnectionPool, Redis
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel
    from redis.backoff import NoBackoff

    # No retries inside redis-py: a retried publish could store an event twice, and the reader does its
    # own reconnection (it must catch up from history, which redis-py's resubscribe does not).
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "socket_keepalive": True,
        "retry": Retry(NoBackoff(), 0),
    }
    if target.is_sentinel:
        sentinel_kwargs = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            **target.sentinel_kwargs,
        }
        sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
        options = {**common, **target.master_kwargs}
        client = sentinel.master_for(target.service_name, max_connections=pool_size, **options)
        pubsub_client = sentinel.master_for(target.service_name, max_connections=2, **options)
        return client, pubsub_client, list(sentinel.sentinels)
    pool = ConnectionPool.from_url(target.url, max_connections=pool_size, **common)
    # The reader holds one pub/sub connection; 2 leaves room for the one being closed while it reconnects.
    pubsub_pool = ConnectionPool.from_url(target.url, max_connections=2, **common)
    return Redis(connection_pool=pool, retry=common["retry"]), Redis(connection_pool=pubsub_pool), []
