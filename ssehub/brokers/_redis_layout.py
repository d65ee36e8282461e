"""What the Redis broker and the publishers share: key names, Lua scripts, the publish call, error translation.

Connections are made in one place, ``ssehub/brokers/redis_client.py``.

The layout is documented for other languages in ``docs/redis-layout.md``; change both together.
Every key carries the hash tag ``{<prefix>}`` so that all of them live in one Redis Cluster slot: the
publish script touches the global ``last-id`` key and a channel's stream in one atomic step.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from ssehub.events import Event, EventId
from ssehub.exceptions import BrokerUnavailableError, ChannelLimitError, InvalidValueError, SSEHubError
from ssehub.settings import validate_redis_prefix

DEFAULT_PREFIX = "ssehub"
#: The error text the publish script starts with when a new channel would exceed ``max_channels``.
CHANNEL_LIMIT_MARKER = "SSEHUB_CHANNEL_LIMIT"


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
        validate_redis_prefix(self.prefix)

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
        return ChannelLimitError(text[len(CHANNEL_LIMIT_MARKER) :].strip() + " (SSEHUB_MAX_CHANNELS)")
    return BrokerUnavailableError(f"Redis failed to {action}: {type(exc).__name__}: {text[:200]}")


def events_from_entries(channel: str, entries: list[Any]) -> list[Event]:
    """Events from XRANGE entries (``[id, [field, value, ...]]``, decoded to str)."""
    events: list[Event] = []
    for entry_id, fields in entries:
        values = dict(zip(fields[::2], fields[1::2], strict=True))
        events.append(Event(EventId.parse(entry_id), channel, values["event"], values["data"]))
    return events


class PublishScript:
    """``publish.lua`` and its KEYS and ARGV for one event: what the broker and every publisher run.

    Args:
        prefix, history_size, history_ttl, max_channels: as the hubs on that Redis use them (the script trims
            with the values its caller passes, so every writer must pass the same).

    Raises:
        InvalidValueError: a bad prefix or retention value.
    """

    __slots__ = ("layout", "options", "source")

    def __init__(
        self,
        prefix: str = DEFAULT_PREFIX,
        history_size: int = 1000,
        history_ttl: float = 3600.0,
        max_channels: int = 10000,
    ) -> None:
        self.layout = RedisLayout(prefix)
        self.options = PublishOptions(history_size, history_ttl, max_channels)
        self.source = load_script("publish.lua")

    def call(self, channel: str, event: str, data: str) -> tuple[list[str], list[str | int]]:
        """The KEYS and ARGV for publishing one event (validated by the caller)."""
        return publish_call(self.layout, self.options, channel, event, data)

    @staticmethod
    def error(exc: BaseException) -> SSEHubError:
        """The ssehub exception for a failed publish."""
        return translate_error(exc, "publish")
