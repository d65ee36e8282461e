"""``rediss+cluster://``: the cluster broker and the publishers over TLS, through the one client factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from ssehub.brokers._cluster_layout import parse_cluster_url
from ssehub.exceptions import BrokerUnavailableError, InvalidValueError
from ssehub.publisher import AsyncPublisher, Publisher
from ssehub.testing import open_stream
from tests.cluster.conftest import HubProcess, channels_per_shard, require_cluster_tools
from tests.cluster.test_end_to_end import by_channel, collect
from tests.cluster_server import LocalCluster, local_cluster
from tests.deploy.proxies import make_test_ca

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A 3-master cluster that speaks only TLS (clients and cluster bus), with a test CA."""
    require_cluster_tools()
    with local_cluster(masters=3, tls=make_test_ca(tmp_path / "tls", client_auth=True)) as cluster:
        yield cluster


def test_tls_cluster_urls_carry_the_ssl_options() -> None:
    """rediss+cluster:// turns TLS on with the ssl_* query options; other options, and options on a plain
    redis+cluster:// URL, are refused."""
    target = parse_cluster_url(
        "rediss+cluster://app:pw@10.0.0.1:7000,10.0.0.2:7000?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required"
        "&ssl_check_hostname=false"
    )
    assert target.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7000))
    assert target.client_kwargs() == {
        "username": "app",
        "password": "pw",
        "ssl": True,
        "ssl_ca_certs": "/ca.pem",
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": False,
    }
    assert target.describe() == "rediss+cluster://10.0.0.1:7000,10.0.0.2:7000"
    assert parse_cluster_url("rediss+cluster://h:1").client_kwargs() == {"ssl": True}
    assert parse_cluster_url("redis+cluster://h:1").client_kwargs() == {}
    for url in ("rediss+cluster://h:1?db=1", "redis+cluster://h:1?ssl_ca_certs=/ca.pem", "rediss+cluster://h:1/0"):
        with pytest.raises(InvalidValueError):
            parse_cluster_url(url)


async def test_hub_and_publishers_work_over_tls(
    tls_cluster: LocalCluster, start_hubs: Callable[..., list[HubProcess]], tmp_path: Path
) -> None:
    """A hub process on a TLS-only cluster streams what a Publisher and an AsyncPublisher publish over TLS to
    channels of all three shards, in order per channel; a publisher that does not trust the CA is refused."""
    prefix = "tls"
    (hub,) = start_hubs(tls_cluster.url, 1, prefix)
    names = [group[0] for group in channels_per_shard(prefix, 1)]
    async with (
        httpx.AsyncClient(timeout=10.0) as client,
        open_stream(client, hub.api + "/stream?channels=" + ",".join(names)) as stream,
    ):
        assert (await stream.next_event()).event == "connected"
        with Publisher.from_url(tls_cluster.url, prefix=prefix) as publisher:
            for i in range(3):
                for name in names:
                    publisher.publish(name, "n", {"c": name, "i": i})
        async with AsyncPublisher.from_url(tls_cluster.url, prefix=prefix) as async_publisher:
            await async_publisher.publish_many(
                [(name, "n", {"c": name, "i": i}) for i in range(3, 6) for name in names]
            )
        received = await collect(stream, 6 * len(names))
    assert by_channel(received) == {name: list(range(6)) for name in names}
    other_ca = make_test_ca(tmp_path / "other")
    untrusted = tls_cluster.url.split("?")[0] + f"?ssl_ca_certs={other_ca.ca}"
    with (
        Publisher.from_url(untrusted, prefix=prefix, socket_timeout=2.0, connect_timeout=2.0) as publisher,
        pytest.raises(BrokerUnavailableError),
    ):
        publisher.publish(names[0], "n", 1)
