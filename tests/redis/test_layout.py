"""Redis URL forms, the key layout and building the broker from settings."""

from __future__ import annotations

import pytest

from ssehub.brokers import create_broker
from ssehub.brokers._redis_layout import RedisLayout, load_script
from ssehub.brokers.redis import RedisBroker
from ssehub.brokers.redis_client import parse_redis_url
from ssehub.exceptions import InvalidValueError
from ssehub.settings import Settings


def test_plain_urls_pass_through() -> None:
    """redis:// and rediss:// URLs go to redis-py unchanged; describe() hides the password."""
    target = parse_redis_url("rediss://user:secret@cache.example:6380/2")
    assert not target.is_sentinel
    assert target.url == "rediss://user:secret@cache.example:6380/2"
    assert "secret" not in target.describe()


def test_sentinel_url_with_hosts_service_db_and_credentials() -> None:
    """redis+sentinel://user:pass@h1:p1,h2:p2/service/db names Sentinels, the service, the db and master auth."""
    target = parse_redis_url("redis+sentinel://app:p%40ss@10.0.0.1:26379,10.0.0.2:26380/mymaster/3?sentinel_password=s")
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert target.service_name == "mymaster"
    assert target.master_kwargs == {"username": "app", "password": "p@ss", "db": 3}
    assert target.sentinel_kwargs == {"password": "s"}
    assert target.describe() == "redis+sentinel://10.0.0.1:26379,10.0.0.2:26380/mymaster"


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://host/mymaster",
        "redis+sentinel://host:26379/",
        "redis+sentinel://host:26379/mymaster/x",
        "redis+sentinel://host:26379/mymaster?unknown=1",
        "http://host:6379",
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    """Malformed Sentinel URLs and foreign schemes raise InvalidValueError."""
    with pytest.raises(InvalidValueError):
        parse_redis_url(url)


def test_every_key_shares_one_hash_tag() -> None:
    """All keys of a prefix carry the same {prefix} hash tag, so they map to one Cluster slot."""
    layout = RedisLayout("app")
    keys = [layout.last_id, layout.floor, layout.channels, layout.stream("a:b")]
    assert all(key.startswith("{app}:") for key in keys)
    assert layout.notify("a:b") == "{app}:notify:a:b"


@pytest.mark.parametrize("prefix", ["", "a{b}", "x" * 65, "with space"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    """A prefix that would break the hash tag or the key alphabet raises InvalidValueError."""
    with pytest.raises(InvalidValueError):
        RedisLayout(prefix)


def test_scripts_ship_as_package_data() -> None:
    """The Lua scripts load through importlib.resources."""
    for name in ("publish.lua", "read.lua", "head.lua"):
        assert "redis.call" in load_script(name)


def test_create_broker_builds_a_redis_broker_from_settings() -> None:
    """SSEHUB_BROKER_URL=redis://... selects RedisBroker with the retention settings (no I/O until start)."""
    settings = Settings(broker_url="redis://127.0.0.1:1/0", history_size=5, redis_pool_size=2)
    broker = create_broker(settings)
    assert isinstance(broker, RedisBroker)
    assert broker.shared_across_processes
    assert broker.status().connected is False
