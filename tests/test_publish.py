"""POST /publish: what it accepts, and a clear 4xx for everything else, with the service staying healthy."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from ssehub.testing import open_stream
from tests.conftest import Server, ServerFactory
from tests.helpers import health, publish

pytestmark = pytest.mark.anyio


async def test_publish_answers_201_with_increasing_ids(server: Server, client: httpx.AsyncClient) -> None:
    """Each publish answers 201 with an id greater than the previous one, across channels."""
    ids = [await publish(client, server, f"c:{n % 3}", "e", n) for n in range(20)]
    parsed = [tuple(map(int, i.split("-"))) for i in ids]
    assert parsed == sorted(parsed)
    assert len(set(ids)) == 20


@pytest.mark.parametrize("data", [None, 0, -1.5, "text", "", [], {}, {"a": [1, {"b": "ü\n"}]}, True, "\u2028"])
async def test_any_json_data_round_trips(server: Server, client: httpx.AsyncClient, data: object) -> None:
    """Any JSON value published arrives equal to what was sent."""
    async with open_stream(client, f"{server.api}/stream?channels=any:1") as stream:
        await stream.next_event()
        await publish(client, server, "any:1", "e", data)
        message = await stream.next_event()
    import json

    assert json.loads(message.data) == data


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "INVALID_JSON"),
        (b"", "INVALID_JSON"),
        (b'{"channel": "a:1", "event": "e", "data": NaN}', "INVALID_JSON"),
        (b"[1, 2]", "INVALID_BODY"),
        (b'{"channel": "a:1", "event": "e"}', "INVALID_BODY"),
        (b'{"channel": "a:1", "data": 1}', "INVALID_BODY"),
        (b'{"channel": "a:1", "event": "e", "data": 1, "extra": 2}', "INVALID_BODY"),
        (b'{"channel": 5, "event": "e", "data": 1}', "INVALID_BODY"),
        (b'{"channel": "a b", "event": "e", "data": 1}', "INVALID_CHANNEL"),
        (b'{"channel": "a:1", "event": "x\\ny", "data": 1}', "INVALID_EVENT"),
        (b'{"channel": "a:1", "event": "", "data": 1}', "INVALID_EVENT"),
        (b'{"channel": "a:1", "event": "e", "data": "\\ud800"}', "INVALID_DATA"),
        (b"\xff\xfe", "INVALID_JSON"),
    ],
)
async def test_bad_bodies_answer_422(server: Server, client: httpx.AsyncClient, body: bytes, code: str) -> None:
    """A body that is not JSON, lacks fields or carries bad values is refused with 422 naming the problem."""
    response = await client.post(f"{server.api}/publish", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == code
    assert (await health(client, server))["status"] == "ok"


async def test_oversized_body_answers_413(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """A body over max_payload_bytes is refused with 413, declared or streamed; nothing is published."""
    server = start_server(max_payload_bytes=1000)
    big = {"channel": "a:1", "event": "e", "data": "x" * 2000}
    response = await client.post(f"{server.api}/publish", json=big)
    assert (response.status_code, response.json()["code"]) == (413, "PAYLOAD_TOO_LARGE")

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"channel": "a:1", "event": "e", "data": "'
        for _ in range(10):
            yield b"y" * 200
        yield b'"}'

    response = await client.post(f"{server.api}/publish", content=chunks())
    assert (response.status_code, response.json()["code"]) == (413, "PAYLOAD_TOO_LARGE")
    assert (await health(client, server))["broker"]["events"] == 0
    await publish(client, server, "a:1", "e", "small")


async def test_channel_limit_answers_429(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """Publishing to more channels than max_channels is refused with 429 CHANNEL_LIMIT; known ones still work."""
    server = start_server(max_channels=3)
    for n in range(3):
        await publish(client, server, f"c:{n}", "e", n)
    response = await client.post(f"{server.api}/publish", json={"channel": "c:9", "event": "e", "data": 1})
    assert (response.status_code, response.json()["code"]) == (429, "CHANNEL_LIMIT")
    await publish(client, server, "c:0", "e", "still fine")
