"""The test echo endpoint, `POST {prefix}/test/echo`: off by default; publishes a list of messages in order."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ssehub.testing import open_stream
from tests.conftest import ServerFactory

pytestmark = pytest.mark.anyio


async def test_off_by_default(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """Without SSEHUB_ENABLE_TEST_ENDPOINTS the endpoint does not exist (404 NOT_FOUND)."""
    server = start_server()
    body = {"channel": "a", "messages": [{"event": "e", "data": 1}]}
    response = await client.post(f"{server.api}/test/echo", json=body)
    assert response.status_code == 404
    assert response.json()["code"] == "NOT_FOUND"


async def test_echo_publishes_messages_in_order(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """Echoed messages reach a subscriber of the channel in order, with the ids the answer lists."""
    server = start_server(enable_test_endpoints=True)
    messages = [{"event": "document_locked", "data": {"by": "alice"}}, {"event": "note", "data": "two\nlines"}]
    async with open_stream(client, f"{server.api}/stream?channels=session:ab12") as stream:
        assert (await stream.next_event()).event == "connected"
        response = await client.post(f"{server.api}/test/echo", json={"channel": "session:ab12", "messages": messages})
        assert response.status_code == 201, response.text
        answer = response.json()
        received = await stream.take(2)
    assert answer["channel"] == "session:ab12"
    assert [m.id for m in received] == answer["ids"]
    assert [m.event for m in received] == ["document_locked", "note"]
    assert [m.data for m in received] == ['{"by":"alice"}', '"two\\nlines"']


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ("not json", 422, "INVALID_JSON"),
        ([], 422, "INVALID_BODY"),
        ({"channel": "a"}, 422, "INVALID_BODY"),
        ({"channel": "a", "messages": [], "extra": 1}, 422, "INVALID_BODY"),
        ({"channel": "a", "messages": []}, 422, "INVALID_BODY"),
        ({"channel": "a", "messages": [{"event": "e", "data": 1}] * 101}, 422, "INVALID_BODY"),
        ({"channel": "a", "messages": [{"event": "e"}]}, 422, "INVALID_BODY"),
        (
            {"channel": "a", "messages": [{"event": "e", "data": 1}, {"event": "bad event", "data": 1}]},
            422,
            "INVALID_EVENT",
        ),
        ({"channel": "bad channel", "messages": [{"event": "e", "data": 1}]}, 422, "INVALID_CHANNEL"),
        ({"channel": "secret", "messages": [{"event": "e", "data": 1}]}, 404, "UNKNOWN_CHANNEL"),
        ({"channel": "a", "messages": [{"event": "e", "data": "x" * 2000}]}, 413, "PAYLOAD_TOO_LARGE"),
    ],
    ids=[
        "not-json",
        "not-object",
        "no-messages",
        "unknown-field",
        "empty-list",
        "too-many",
        "no-data",
        "bad-event-type",
        "bad-channel",
        "unknown-channel",
        "data-too-large",
    ],
)
async def test_bad_bodies_are_refused_before_anything_is_published(
    start_server: ServerFactory, client: httpx.AsyncClient, body: Any, status: int, code: str
) -> None:
    """Every bad body gets a JSON error with its status and code, and nothing of it is published."""
    server = start_server(enable_test_endpoints=True, channels=["a*"], max_payload_bytes=1024)
    head_before = await server_head(client, server.api)
    content = body.encode() if isinstance(body, str) else httpx.Request("POST", "/", json=body).content
    response = await client.post(
        f"{server.api}/test/echo", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert response.json()["error"]
    assert await server_head(client, server.api) == head_before


async def server_head(client: httpx.AsyncClient, api: str) -> str:
    """The id a fresh stream of channel `a` starts from: it moves when anything is published there."""
    async with open_stream(client, f"{api}/stream?channels=a") as stream:
        return (await stream.next_event()).id


async def test_with_credentials_the_caller_needs_publish_rights(
    start_server: ServerFactory, client: httpx.AsyncClient
) -> None:
    """With API keys configured, echo answers 401 without a token, 403 without publish rights on the channel,
    and 201 with them (as POST /publish does)."""
    keys = [
        {"key": "publish-key-0123456789", "scopes": ["publish"], "channels": ["session:*"], "name": "tests"},
        {"key": "reader-key-0123456789", "scopes": ["subscribe"], "channels": ["session:*"], "name": "reader"},
    ]
    server = start_server(enable_test_endpoints=True, api_keys=keys)
    body = {"channel": "session:ab12", "messages": [{"event": "e", "data": 1}]}
    url = f"{server.api}/test/echo"
    anonymous = await client.post(url, json=body)
    reader = await client.post(url, json=body, headers={"Authorization": "Bearer reader-key-0123456789"})
    elsewhere = await client.post(
        url,
        json={**body, "channel": "other"},
        headers={"Authorization": "Bearer publish-key-0123456789"},
    )
    allowed = await client.post(url, json=body, headers={"Authorization": "Bearer publish-key-0123456789"})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert reader.status_code == 403
    assert elsewhere.status_code == 403
    assert [r.json()["code"] for r in (reader, elsewhere)] == ["FORBIDDEN", "FORBIDDEN"]
    assert allowed.status_code == 201, allowed.text
