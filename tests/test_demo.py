"""The demo (SSEHUB_DEMO): its simulator publishes through the hub with a gapless sequence, its JSON endpoints
validate and publish, its page is served at `/`, and on Redis a restarted demo continues the sequence."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ssehub import Hub, create_app
from ssehub.demo import CHANNELS
from ssehub.testing import EventStream, SSEMessage, open_stream, running_server
from tests.conftest import make_settings
from tests.redis_server import REDIS_SERVER, SKIP_REASON, redis_server

pytestmark = pytest.mark.anyio

STREAM = "/api/v1/events/stream?channels=" + ",".join(CHANNELS)


@contextlib.contextmanager
def demo_server(**overrides: Any) -> Iterator[str]:
    """The standalone app with the demo on, on a free port; yields the base URL."""
    hub = Hub(make_settings(demo=True, heartbeat_interval=5.0, **overrides))
    with running_server(create_app(hub=hub)) as base:
        yield base


async def _messages(stream: EventStream, count: int, timeout: float = 15.0) -> list[SSEMessage]:
    skip = ("heartbeat", "connected")
    async with asyncio.timeout(timeout):
        return [await stream.next_event(timeout, skip=skip) for _ in range(count)]


def _seqs(messages: list[SSEMessage]) -> list[int]:
    return [json.loads(m.data)["seq"] for m in messages]


async def test_simulator_publishes_all_three_event_types_in_sequence(client: httpx.AsyncClient) -> None:
    """download_progress, queue_update and system_notification arrive with consecutive seq numbers, and a running
    download's progress grows."""
    with demo_server() as base:
        async with open_stream(client, base + STREAM, timeout=15) as stream:
            added = await client.post(base + "/demo/downloads", json={"name": "notes.txt", "size_mb": 1})
            assert added.status_code == 201  # announced by a system_notification
            messages = await _messages(stream, 40)
    seqs = _seqs(messages)
    assert seqs == list(range(seqs[0], seqs[0] + 40))
    assert {m.event for m in messages} == {"download_progress", "queue_update", "system_notification"}
    progress: dict[str, list[float]] = {}
    for message in messages:
        if message.event == "download_progress":
            data = json.loads(message.data)
            assert set(data) == {
                "seq",
                "download_id",
                "name",
                "status",
                "progress",
                "size",
                "downloaded",
                "speed",
                "eta",
            }
            progress.setdefault(data["download_id"], []).append(data["progress"])
    assert any(values[-1] > values[0] for values in progress.values())
    assert all(values == sorted(values) for values in progress.values())


async def test_page_and_assets_are_served(client: httpx.AsyncClient) -> None:
    """`/` serves the dashboard with the API prefix filled in; its CSS and JS are served; other names 404."""
    with demo_server(prefix="/events") as base:
        page = await client.get(base + "/")
        css = await client.get(base + "/demo/static/demo.css")
        script = await client.get(base + "/demo/static/demo.js")
        missing = await client.get(base + "/demo/static/secrets.txt")
        state = (await client.get(base + "/demo/state")).json()
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'data-prefix="/events"' in page.text
    assert "{{prefix}}" not in page.text
    assert css.headers["content-type"].startswith("text/css")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "SSEHubClient" in script.text
    assert missing.status_code == 404
    assert missing.json()["code"] == "NOT_FOUND"
    assert isinstance(state["seq"], int)
    assert state["downloads"]
    assert {"active", "queued", "paused", "completed", "total_speed", "notifications"} <= state.keys()
    assert all(n["seq"] <= state["seq"] for n in state["notifications"])


async def test_simulator_runs_only_within_the_lifespan(client: httpx.AsyncClient) -> None:
    """Building the app starts nothing; the simulator runs while the server runs and is stopped with it."""
    hub = Hub(make_settings(demo=True))
    app = create_app(hub=hub)
    demo = app.demo
    assert demo is not None
    assert (demo.seq, demo.downloads) == (0, {})
    with running_server(app) as base:
        async with asyncio.timeout(10):
            while demo.seq < 3:
                await asyncio.sleep(0.05)
        assert (await client.get(base + "/demo/state")).json()["seq"] >= 3
    stopped_at = demo.seq
    await asyncio.sleep(1.2)
    assert demo.seq == stopped_at
    assert demo._task is None


async def test_demo_is_off_by_default(client: httpx.AsyncClient) -> None:
    """Without SSEHUB_DEMO there is no page at `/` and no demo endpoint."""
    hub = Hub(make_settings())
    with running_server(create_app(hub=hub)) as base:
        assert (await client.get(base + "/")).status_code == 404
        assert (await client.post(base + "/demo/downloads", json={"name": "x"})).status_code == 404


async def test_add_pause_resume_cancel_publish_events(client: httpx.AsyncClient) -> None:
    """Each action answers the download's new state and publishes it as a download_progress event."""
    with demo_server() as base:
        async with open_stream(client, base + STREAM, timeout=15) as stream:
            added = await client.post(base + "/demo/downloads", json={"name": "holiday.mp4", "size_mb": 5000})
            assert added.status_code == 201, added.text
            download_id = added.json()["download_id"]
            answers = [added.json()]
            for action in ("pause", "resume", "cancel"):
                response = await client.post(f"{base}/demo/downloads/{download_id}/{action}")
                assert response.status_code == 200, response.text
                answers.append(response.json())
            seen: list[str] = []
            async with asyncio.timeout(15):
                while seen[-1:] != ["cancelled"]:
                    message = await stream.next_event(15, skip=("heartbeat", "connected"))
                    data = json.loads(message.data)
                    if message.event == "download_progress" and data["download_id"] == download_id:
                        seen.append(data["status"])
    assert answers[0]["name"] == "holiday.mp4"
    assert answers[0]["size"] == 5000 * 1024 * 1024
    assert answers[1]["status"] == "paused"
    assert answers[2]["status"] in ("queued", "downloading")  # resumed: it waits for a free slot, or has one
    assert answers[3]["status"] == "cancelled"
    assert "paused" in seen
    assert seen[-1] == "cancelled"


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/demo/downloads", "nope", 422, "INVALID_JSON"),
        ("/demo/downloads", {"size_mb": 3}, 422, "INVALID_BODY"),
        ("/demo/downloads", {"name": "a", "colour": "red"}, 422, "INVALID_BODY"),
        ("/demo/downloads", {"name": "  "}, 422, "INVALID_NAME"),
        ("/demo/downloads", {"name": "a\nb"}, 422, "INVALID_NAME"),
        ("/demo/downloads", {"name": "a", "size_mb": 0}, 422, "INVALID_SIZE"),
        ("/demo/downloads", {"name": "a", "size_mb": "big"}, 422, "INVALID_SIZE"),
        ("/demo/downloads", {"name": "a" * 5000}, 413, "PAYLOAD_TOO_LARGE"),
        ("/demo/downloads/dl-999/pause", None, 404, "UNKNOWN_DOWNLOAD"),
        ("/demo/downloads/dl-1/explode", None, 404, "NOT_FOUND"),
    ],
    ids=[
        "not-json",
        "no-name",
        "unknown-field",
        "blank-name",
        "control-character",
        "zero-size",
        "size-not-number",
        "too-large",
        "unknown-download",
        "unknown-action",
    ],
)
async def test_bad_requests_get_json_errors(
    client: httpx.AsyncClient, path: str, body: Any, status: int, code: str
) -> None:
    """Bad demo requests get their status and a JSON {error, code}."""
    with demo_server() as base:
        content = body.encode() if isinstance(body, str) else json.dumps(body if body is not None else {}).encode()
        response = await client.post(base + path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert response.json()["error"]


async def test_impossible_transition_is_409(client: httpx.AsyncClient) -> None:
    """Resuming a download that is not paused, or acting on a cancelled one, answers 409 INVALID_STATE."""
    with demo_server() as base:
        download_id = (await client.post(base + "/demo/downloads", json={"name": "x.bin"})).json()["download_id"]
        resume = await client.post(f"{base}/demo/downloads/{download_id}/resume")
        await client.post(f"{base}/demo/downloads/{download_id}/cancel")
        pause = await client.post(f"{base}/demo/downloads/{download_id}/pause")
    assert resume.status_code == 409
    assert resume.json()["code"] == "INVALID_STATE"
    assert pause.status_code == 409


@pytest.mark.redis
@pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON)
async def test_restarted_demo_on_redis_continues_the_sequence(client: httpx.AsyncClient) -> None:
    """A demo restarted on the same Redis reads its seq and queue back from history: a client resuming with its
    last id gets every later event, across the restart, with consecutive seq numbers and the same downloads."""
    with redis_server() as redis:
        with demo_server(broker_url=redis.url) as base:
            async with open_stream(client, base + STREAM, timeout=15) as stream:
                before = await _messages(stream, 15)
            state = (await client.get(base + "/demo/state")).json()
        # Stopped. A new server and demo on the same Redis; the client resumes from the last id it saw.
        with demo_server(broker_url=redis.url) as base:
            headers = {"Last-Event-ID": before[-1].id}
            async with open_stream(client, base + STREAM, headers=headers, timeout=15) as stream:
                after = await _messages(stream, 30)
            restored = (await client.get(base + "/demo/state")).json()
    seqs = _seqs(before) + _seqs(after)
    assert seqs == list(range(seqs[0], seqs[0] + 45))
    unfinished = {d["download_id"] for d in state["downloads"] if d["status"] in ("queued", "downloading", "paused")}
    assert unfinished <= {d["download_id"] for d in restored["downloads"]}


async def test_with_credentials_public_demo_channels_keep_the_page_working(client: httpx.AsyncClient) -> None:
    """With API keys configured, the demo's stream is refused (401) unless its channels are public, as the README
    advises; then it streams without a token."""
    keys = [{"key": "publish-key-0123456789", "scopes": ["publish"], "channels": ["*"], "name": "worker"}]
    with demo_server(api_keys=keys) as base:
        refused = await client.get(base + STREAM)
    assert refused.status_code == 401
    with demo_server(api_keys=keys, public_channels=",".join(CHANNELS)) as base:
        async with open_stream(client, base + STREAM, timeout=15) as stream:
            assert stream.response.status_code == 200
            messages = await _messages(stream, 3)
    assert all("seq" in json.loads(m.data) for m in messages)
