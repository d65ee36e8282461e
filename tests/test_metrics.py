"""Prometheus metrics at /metrics: counts after real traffic, a Prometheus parser accepts them, access settings."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from ssehub import Hub, create_api, create_app
from ssehub.guard import uvicorn_options
from ssehub.metrics import Metrics
from ssehub.testing import open_stream, running_server
from tests.auth_helpers import KEY_ADMIN, KEY_SUBSCRIBE
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by (sample name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def mounted_with_metrics(hub: Hub) -> Starlette:
    """The API mounted in an application with /metrics routed to ``Metrics`` (the portable writer's setup)."""
    metrics = Metrics(hub)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with hub, metrics:
            yield

    routes = [Route("/metrics", metrics), Mount(hub.settings.prefix, app=create_api(hub))]
    return Starlette(routes=routes, lifespan=lifespan)


@contextlib.contextmanager
def serving(writer: str, **overrides: Any) -> Iterator[tuple[str, Hub]]:
    """A server with the standalone app (native or direct writer) or the mounted API (portable); yields its URL."""
    hub = Hub(make_settings(**overrides))
    app = mounted_with_metrics(hub) if writer == "portable" else create_app(hub=hub)
    with running_server(app, **uvicorn_options(hub.settings, native=writer == "native")) as base_url:
        yield base_url, hub


async def test_metrics_count_real_traffic(writer: str) -> None:
    """Streams opened, refused, resumed, reset and closed, events published and delivered, bytes and latency are
    counted as they happened, in a text exposition the Prometheus parser accepts."""
    with serving(writer, channels=["jobs:*"]) as (base_url, _hub):
        api = f"{base_url}/api/v1/events"
        async with httpx.AsyncClient(timeout=5) as client, contextlib.AsyncExitStack() as stack:
            plain = [
                await stack.enter_async_context(open_stream(client, f"{api}/stream?channels=jobs:1")) for _ in range(2)
            ]
            filtered = await stack.enter_async_context(open_stream(client, f"{api}/stream?channels=jobs:1&kind=a"))
            streams = [*plain, filtered]
            for stream in streams:
                assert (await stream.next_event()).event == "connected"
            ids = []
            for kind in ("a", "b", "a", "b"):
                response = await client.post(
                    f"{api}/publish", json={"channel": "jobs:1", "event": "job", "data": {"kind": kind}}
                )
                ids.append(response.json()["id"])
            for stream in plain:
                assert len(await stream.take(4)) == 4
            assert len(await filtered.take(2)) == 2

            assert (await client.get(f"{api}/stream?channels=other:1")).status_code == 404
            too_many = ",".join(f"jobs:{n}" for n in range(40))
            assert (await client.get(f"{api}/stream?channels={too_many}")).status_code == 422
            async with open_stream(
                client, f"{api}/stream?channels=jobs:1", headers={"Last-Event-ID": ids[0]}
            ) as resumed:
                assert len(await resumed.take(4)) == 4  # connected, then the 3 events after ids[0]
            async with open_stream(
                client, f"{api}/stream?channels=jobs:1", headers={"Last-Event-ID": "garbage"}
            ) as reset:
                assert [m.event for m in await reset.take(2)] == ["connected", "reset"]
            received_bytes = sum(stream.response.num_bytes_downloaded for stream in streams)

            # The two short-lived streams end when their client leaves: poll until the hub has seen it (bounded).
            async with asyncio.timeout(5):
                while True:
                    response = await client.get(f"{base_url}/metrics")
                    found = samples(response.text)
                    if found.get(("ssehub_streams_closed_total", (("reason", "client"),))) == 2:
                        break
                    await asyncio.sleep(0.05)
    assert response.headers["content-type"].startswith("text/plain")
    expected = {
        ("ssehub_streams_opened_total", ()): 5,
        ("ssehub_streams_open", ()): 3,
        ("ssehub_streams_refused_total", (("code", "UNKNOWN_CHANNEL"),)): 1,
        ("ssehub_streams_refused_total", (("code", "TOO_MANY_CHANNELS"),)): 1,
        ("ssehub_stream_resumes_total", ()): 1,
        ("ssehub_events_replayed_total", ()): 3,
        ("ssehub_stream_resets_total", (("reason", "invalid_last_event_id"),)): 1,
        ("ssehub_events_published_total", ()): 4,
        ("ssehub_events_received_total", ()): 4,
        ("ssehub_events_delivered_total", ()): 2 * 4 + 2,
        ("ssehub_broker_connected", ()): 1,
        ("ssehub_broker_reconnects_total", ()): 0,
        ("ssehub_broker_gaps_total", ()): 0,
    }
    assert {key: found.get(key) for key in expected} == expected
    # Written bytes include the open streams' (with chunk framing on the direct writer).
    assert found[("ssehub_bytes_written_total", ())] >= received_bytes > 0
    assert found[("ssehub_publish_to_write_seconds_count", ())] >= 1
    assert 0 <= found[("ssehub_publish_to_write_seconds_sum", ())] < 5


async def test_slow_subscriber_disconnects_are_counted() -> None:
    """A stream ended for falling behind is counted as closed with reason overflow."""
    hub = Hub(make_settings(max_buffer_bytes=1024))
    metrics = Metrics(hub)
    async with hub, metrics:
        sub = await hub.open(["jobs:1"])  # its response never starts: nothing is written, events pile up
        await hub.publish("jobs:1", "job", "x" * 2000)
        assert sub.connection.close_reason == "overflow"
        hub.release(sub)
        found = samples(metrics.render().decode())
    assert found[("ssehub_streams_closed_total", (("reason", "overflow"),))] == 1


async def test_metrics_admin_only_and_off() -> None:
    """SSEHUB_METRICS=admin answers 401 without credentials or with a bad key, 403 to a key without the admin
    scope, 200 to an admin key; off serves no /metrics."""
    keys = [
        {"key": KEY_ADMIN, "scopes": ["admin"], "channels": [], "name": "prometheus"},
        {"key": KEY_SUBSCRIBE, "scopes": ["subscribe"], "channels": ["*"], "name": "reader"},
    ]
    with serving("direct", metrics="admin", api_keys=keys) as (base_url, _hub):
        async with httpx.AsyncClient(timeout=5) as client:
            url = f"{base_url}/metrics"
            missing = await client.get(url)
            wrong = await client.get(url, headers={"Authorization": "Bearer not-a-key-0123456789"})
            reader = await client.get(url, headers={"Authorization": f"Bearer {KEY_SUBSCRIBE}"})
            in_query = await client.get(url, params={"token": KEY_ADMIN})  # never read from the query here
            admin = await client.get(url, headers={"Authorization": f"Bearer {KEY_ADMIN}"})
    assert missing.status_code == wrong.status_code == in_query.status_code == 401
    assert missing.json()["code"] == "UNAUTHORIZED"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert reader.status_code == 403
    assert reader.json()["code"] == "FORBIDDEN"
    assert admin.status_code == 200
    assert ("ssehub_streams_open", ()) in samples(admin.text)
    with serving("direct", metrics="off") as (base_url, _hub):
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"{base_url}/metrics")).status_code == 404


async def test_metrics_next_to_an_api_at_the_root() -> None:
    """With an empty SSEHUB_PREFIX the API serves the root and /metrics is still the metrics."""
    with serving("direct", prefix="") as (base_url, _hub):
        async with httpx.AsyncClient(timeout=5) as client:
            metrics = await client.get(f"{base_url}/metrics")
            health = await client.get(f"{base_url}/health")
    assert metrics.status_code == 200
    assert ("ssehub_streams_open", ()) in samples(metrics.text)
    assert health.status_code == 200
