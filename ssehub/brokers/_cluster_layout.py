"""What the Redis Cluster broker needs besides the broker itself: URL, key names, shards, clients.

Keys are spread over the cluster by channel: each channel's keys carry the hash tag ``{<prefix>:<channel>}``,
so a channel lives in one slot and its publish script touches one slot's declared keys. Each shard keeps its
own order of ids in keys whose hash tag lands on the shard's *anchor* slot (the lowest slot it owns). The
layout is documented for other languages in ``docs/redis-layout.md`` ("Redis Cluster").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from urllib.parse import parse_qs, unquote

from ssehub.brokers._redis_layout import RedisLayout
from ssehub.exceptions import InvalidValueError

SLOTS = 16384
SCHEME = "redis+cluster"
TLS_SCHEME = "rediss+cluster"
#: Query options of a ``rediss+cluster://`` URL, passed to every connection as redis-py's keyword arguments.
TLS_OPTIONS = frozenset({"ssl_ca_certs", "ssl_cert_reqs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"})


@dataclass(frozen=True, slots=True)
class ClusterTarget:
    """The seed nodes, credentials and TLS options of a ``redis+cluster://`` or ``rediss+cluster://`` URL.

    ``tls`` is empty for plain TCP; otherwise redis-py's ``ssl=True`` and the URL's ``ssl_*`` options.
    """

    nodes: tuple[tuple[str, int], ...]
    credentials: dict[str, Any] = field(default_factory=dict)
    tls: dict[str, Any] = field(default_factory=dict)

    def client_kwargs(self) -> dict[str, Any]:
        """What every connection to a node of this cluster takes besides the shared options."""
        return {**self.credentials, **self.tls}

    def describe(self) -> str:
        """The target without credentials, for logs and /health."""
        return f"{TLS_SCHEME if self.tls else SCHEME}://" + ",".join(f"{host}:{port}" for host, port in self.nodes)


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (its scheme is ``redis+cluster`` or ``rediss+cluster``)."""
    return url.partition("://")[0].lower() in {SCHEME, TLS_SCHEME}


def parse_cluster_url(url: str) -> ClusterTarget:
    """Parse a ``redis+cluster://`` URL, or a ``rediss+cluster://`` one (TLS; ``ssl_*`` query options).

    Raises:
        InvalidValueError: another scheme, no host, a host without port, a path, or query options other than
            the TLS ones of a ``rediss+cluster://`` URL.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in {SCHEME, TLS_SCHEME}:
        raise InvalidValueError(f"a Redis Cluster broker URL starts with {SCHEME}:// or {TLS_SCHEME}://")
    rest, has_query, query = rest.partition("?")
    if (has_query and scheme != TLS_SCHEME) or "/" in rest.strip("/"):
        raise InvalidValueError(f"{scheme}:// URL: expected user:password@host:port,host:port and nothing after")
    tls: dict[str, Any] = {}
    if scheme == TLS_SCHEME:
        options = {key: values[-1] for key, values in parse_qs(query, keep_blank_values=True).items()}
        unknown = sorted(set(options) - TLS_OPTIONS)
        if unknown:
            raise InvalidValueError(f"{scheme}:// URL: unknown options {unknown}; known: {sorted(TLS_OPTIONS)}")
        if "ssl_check_hostname" in options:
            flag = options.pop("ssl_check_hostname").lower()
            if flag not in {"true", "false"}:
                raise InvalidValueError(f"{scheme}:// URL: ssl_check_hostname is true or false")
            tls["ssl_check_hostname"] = flag == "true"
        tls = {"ssl": True, **options, **tls}
    userinfo, _, hosts = rest.strip("/").rpartition("@")
    credentials: dict[str, Any] = {}
    if userinfo:
        user, has_password, password = userinfo.partition(":")
        if has_password:
            credentials["password"] = unquote(password)
            if user:
                credentials["username"] = unquote(user)
        else:
            credentials["password"] = unquote(user)
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidValueError(f"{scheme}:// URL: expected host:port, got {item.strip()[:60]!r}")
        nodes.append((host.strip("[]"), int(port)))
    return ClusterTarget(tuple(nodes), credentials, tls)


def key_slot(key: str) -> int:
    """The cluster slot of a key (CRC16 of its hash tag, as Redis computes it)."""
    from redis.crc import key_slot as crc_slot

    return int(crc_slot(key.encode("utf-8")))


@cache
def anchor_tag(prefix: str, anchor: int) -> str:
    """A short hash tag that lands on slot ``anchor``: ``<prefix>.shard.<n>`` for the smallest such n."""
    n = 0
    while key_slot(f"{prefix}.shard.{n}") != anchor:
        n += 1
    return f"{prefix}.shard.{n}"


@dataclass(frozen=True, slots=True)
class ClusterLayout:
    """Key and pub/sub names of the cluster layout under one prefix (validated like the single-Redis one)."""

    prefix: str = "ssehub"

    def __post_init__(self) -> None:
        RedisLayout(self.prefix)  # the same rule for the prefix

    @property
    def channel_prefix(self) -> str:
        """What every channel key starts with: ``{<prefix>:``; the channel name and ``}`` follow."""
        return "{" + self.prefix + ":"

    def stream(self, channel: str) -> str:
        """The stream key holding a channel's history."""
        return self.channel_prefix + channel + "}:stream"

    def home(self, channel: str) -> str:
        """The anchor of the shard whose order issued the ids in the channel's stream."""
        return self.channel_prefix + channel + "}:home"

    def notify(self, channel: str) -> str:
        """The sharded pub/sub channel of a channel's live notifications (in the channel's slot)."""
        return self.channel_prefix + channel + "}:notify"

    def slot(self, channel: str) -> int:
        """The slot of a channel's keys."""
        return key_slot(self.stream(channel))

    def shard_prefix(self, anchor: int) -> str:
        """What the keys of the shard named ``anchor`` start with (their slot is ``anchor``)."""
        return "{" + anchor_tag(self.prefix, anchor) + "}:" + self.prefix + ":"

    @property
    def node_channel(self) -> str:
        """A classic pub/sub channel that carries nothing; keeps each shard connection in subscribed mode."""
        return "{" + self.prefix + "}:node"


@dataclass(frozen=True, slots=True)
class Shard:
    """One master and the name of its order: ``anchor``, the lowest slot it owned when discovered."""

    anchor: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Topology:
    """Which shard owns which slot, as a hub last saw it."""

    shards: dict[int, Shard]
    owner: tuple[int, ...]  # slot -> anchor of its shard (-1: not covered)

    def shard_of_slot(self, slot: int) -> Shard | None:
        """The shard owning ``slot``, or None if no master serves it."""
        anchor = self.owner[slot]
        return self.shards.get(anchor) if anchor >= 0 else None


def topology_from_slots(slots: dict[int, Any]) -> Topology:
    """A Topology from redis-py's ``nodes_manager.slots_cache`` (slot -> [primary node, replicas...])."""
    masters: list[tuple[str, int] | None] = [None] * SLOTS
    for slot, holders in slots.items():
        if holders:
            masters[slot] = (holders[0].host, int(holders[0].port))
    return topology_from_masters(masters)


def topology_from_cluster_slots(reply: Sequence[Any], asked_host: str) -> Topology:
    """A Topology from a ``CLUSTER SLOTS`` reply (``[[first, last, [host, port, ...], replicas...], ...]``).

    ``asked_host`` replaces an empty host (a node that does not know its own address answers with one).
    """
    masters: list[tuple[str, int] | None] = [None] * SLOTS
    for first, last, primary, *_replicas in reply:
        address = (str(primary[0]) or asked_host, int(primary[1]))
        for slot in range(int(first), int(last) + 1):
            masters[slot] = address
    return topology_from_masters(masters)


def topology_from_masters(masters: Sequence[tuple[str, int] | None]) -> Topology:
    """A Topology from the (host, port) of the master of every slot (None: not covered).

    Every master is named by the lowest slot it owns, so hubs and publishers that see the same cluster name
    shards alike.
    """
    anchors: dict[tuple[str, int], int] = {}
    for slot, address in enumerate(masters):
        if address is not None and address not in anchors:
            anchors[address] = slot
    shards = {anchor: Shard(anchor, host, port) for (host, port), anchor in anchors.items()}
    owner = tuple(anchors[address] if address is not None else -1 for address in masters)
    return Topology(shards, owner)
