"""Cluster positions (``c1.<shard>:<ms>-<seq>...``), cluster URLs and settings: no Redis needed."""

from __future__ import annotations

import pytest

from ssehub.brokers._cluster_layout import ClusterLayout, anchor_tag, key_slot, parse_cluster_url
from ssehub.brokers._shard_ids import ShardEvent, ShardVector
from ssehub.events import Event, EventId
from ssehub.exceptions import InvalidEventIdError, InvalidValueError
from tests.conftest import make_settings


def test_vector_text_round_trips_sorted_by_shard() -> None:
    """A vector prints its entries sorted by shard anchor and parses back to an equal vector."""
    vector = ShardVector({10923: EventId(5, 1), 0: EventId(7, 0), 5461: EventId(6, 2)})
    assert str(vector) == "c1.0:7-0.5461:6-2.10923:5-1"
    assert ShardVector.parse(str(vector)) == vector


@pytest.mark.parametrize(
    "text",
    [
        "",
        "c1",
        "c1.",
        "1764040000123-0",
        "c2.0:1-0",
        "c1.0:1-0.0:2-0",
        "c1.16384:1-0",
        "c1.0:01-0",
        "c1.0:1-0\nid: x",
        "c1." + ".".join(f"{n}:1-0" for n in range(65)),
    ],
)
def test_vector_rejects_what_ssehub_never_issues(text: str) -> None:
    """Malformed, duplicated, out-of-range or oversized positions raise InvalidEventIdError (the hub resets)."""
    with pytest.raises(InvalidEventIdError):
        ShardVector.parse(text)


def test_covers_compares_with_the_events_own_shard_only() -> None:
    """A vector covers an event iff its id on the event's shard is not smaller; unknown shards cover nothing."""
    vector = ShardVector({0: EventId(10, 0), 5461: EventId(3, 0)})
    assert vector.covers(ShardEvent(EventId(10, 0), "a", "e", "1", 0))
    assert not vector.covers(ShardEvent(EventId(10, 1), "a", "e", "1", 0))
    assert not vector.covers(ShardEvent(EventId(4, 0), "b", "e", "1", 5461))
    assert not vector.covers(ShardEvent(EventId(1, 0), "c", "e", "1", 10923))
    assert not vector.covers(Event(EventId(1, 0), "c", "e", "1"))


def test_merged_takes_the_greater_id_per_shard() -> None:
    """merged keeps per shard the greater id and adds shards the vector lacked."""
    vector = ShardVector({0: EventId(10, 0), 5461: EventId(3, 0)})
    merged = vector.merged({0: EventId(9, 0), 5461: EventId(4, 0), 10923: EventId(1, 0)})
    assert str(merged) == "c1.0:10-0.5461:4-0.10923:1-0"


def test_shard_event_frame_carries_the_vector_as_id() -> None:
    """A shard event's SSE frame has its vector position as ``id:``, the event type and the data."""
    event = ShardEvent(EventId(5, 0), "a", "e", '{"x":1}', 0)
    event.position = "c1.0:5-0.5461:2-0"
    assert event.frame == b'id: c1.0:5-0.5461:2-0\nevent: e\ndata: {"x":1}\n\n'


def test_anchor_tags_hash_to_their_slot() -> None:
    """Each shard's key prefix hashes to the shard's anchor slot, so its counter lives on that shard."""
    layout = ClusterLayout("ssehub")
    for anchor in (0, 5461, 10923, 16383):
        assert key_slot(layout.shard_prefix(anchor) + "last-id") == anchor
        assert anchor_tag("ssehub", anchor).startswith("ssehub.shard.")


def test_channel_keys_share_the_channels_slot() -> None:
    """A channel's stream, home key and sharded pub/sub channel hash to one slot, different per channel."""
    layout = ClusterLayout("p")
    slots = {key_slot(layout.stream("a")), key_slot(layout.home("a")), key_slot(layout.notify("a"))}
    assert slots == {layout.slot("a")}
    assert len({layout.slot(f"room:{n}") for n in range(20)}) > 10


def test_cluster_url_parses_seeds_and_credentials() -> None:
    """redis+cluster:// URLs give seed nodes and credentials; describe() hides the password."""
    target = parse_cluster_url("redis+cluster://app:s%3Acret@10.0.0.1:7000,[::1]:7001")
    assert target.nodes == (("10.0.0.1", 7000), ("::1", 7001))
    assert target.credentials == {"username": "app", "password": "s:cret"}
    assert "s:cret" not in target.describe()


@pytest.mark.parametrize(
    "url", ["redis://h:1", "redis+cluster://", "redis+cluster://h", "redis+cluster://h:1/0", "redis+cluster://h:1?x=1"]
)
def test_bad_cluster_urls_are_refused(url: str) -> None:
    """A cluster URL without host:port, or with a database or options, is refused with a clear error."""
    with pytest.raises(InvalidValueError):
        parse_cluster_url(url)


def test_settings_accept_the_cluster_scheme() -> None:
    """SSEHUB_BROKER_URL accepts redis+cluster://."""
    assert make_settings(broker_url="redis+cluster://h:7000").broker_url == "redis+cluster://h:7000"
