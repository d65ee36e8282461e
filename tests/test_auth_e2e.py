"""End to end with tokens: two users each receive only their own user and session channels, live, across
reconnects and history replay; a stream ends when its token expires and resumes with a fresh one, losing nothing.

The two-user scenario also runs on Redis (tests/redis/test_auth_redis.py).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from ssehub.testing import EventStream, SSEMessage, open_stream
from tests.auth_helpers import KEY_PUBLISH, SECRET, token
from tests.conftest import Server, ServerFactory

pytestmark = pytest.mark.anyio

PUBLISHER = {"key": KEY_PUBLISH, "scopes": ["publish"], "channels": ["user:*", "session:*"], "name": "backend"}
AUTH_SETTINGS: dict[str, Any] = {"jwt_secret": SECRET, "jwt_leeway": 0, "api_keys": [PUBLISHER]}


async def _publish(client: httpx.AsyncClient, server: Server, channel: str, data: dict[str, Any]) -> str:
    response = await client.post(
        f"{server.api}/publish",
        json={"channel": channel, "event": "note", "data": data},
        headers={"Authorization": f"Bearer {KEY_PUBLISH}"},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _url(server: Server, user: str, jwt_text: str, last_event_id: str | None = None) -> str:
    url = f"{server.api}/stream?channels=user:{user},session:s-{user}&token={jwt_text}"
    return url if last_event_id is None else f"{url}&lastEventId={last_event_id}"


async def _notes(stream: EventStream, count: int) -> list[dict[str, Any]]:
    messages: list[SSEMessage] = await stream.take(count, timeout=10)
    assert [m.event for m in messages] == ["note"] * count, messages
    return [json.loads(m.data) for m in messages]


async def two_users(server: Server, client: httpx.AsyncClient) -> None:
    """Alice and Bob each see only their own user: and session: events, live, after a reconnect and in replay."""
    tokens = {user: token(sub=user, sid=f"s-{user}") for user in ("alice", "bob")}
    async with (
        open_stream(client, _url(server, "alice", tokens["alice"]), timeout=10) as alice,
        open_stream(client, _url(server, "bob", tokens["bob"]), timeout=10) as bob,
    ):
        assert alice.response.status_code == 200
        assert bob.response.status_code == 200
        start = {"alice": (await alice.next_event()).id, "bob": (await bob.next_event()).id}
        for n, (channel, who) in enumerate(
            [("user:alice", "alice"), ("user:bob", "bob"), ("session:s-alice", "alice"), ("session:s-bob", "bob")]
        ):
            await _publish(client, server, channel, {"for": who, "n": n})
        assert await _notes(alice, 2) == [{"for": "alice", "n": 0}, {"for": "alice", "n": 2}]
        assert await _notes(bob, 2) == [{"for": "bob", "n": 1}, {"for": "bob", "n": 3}]
    # Both away: more events for each, and for a third user.
    for n, (channel, who) in enumerate(
        [("session:s-bob", "bob"), ("user:alice", "alice"), ("user:carol", "carol"), ("session:s-alice", "alice")],
        start=4,
    ):
        await _publish(client, server, channel, {"for": who, "n": n})
    for user, other in (("alice", "bob"), ("bob", "alice")):
        # Replay from the very start: everything of the user's own channels, in order, nothing of anyone else's.
        async with open_stream(client, _url(server, user, tokens[user], start[user]), timeout=10) as stream:
            assert stream.response.status_code == 200
            assert json.loads((await stream.next_event()).data)["resumed"] is True
            replayed = await _notes(stream, 4)
            assert [note["for"] for note in replayed] == [user] * 4
            # The next event is the live marker for this user, not a marker for the other.
            await _publish(client, server, f"user:{other}", {"for": other, "n": "marker"})
            await _publish(client, server, f"user:{user}", {"for": user, "n": "marker"})
            assert await _notes(stream, 1) == [{"for": user, "n": "marker"}]
    # Asking for the other's channels is refused before any stream starts, with or without an id to resume from.
    for channels in ("user:bob", "session:s-bob", "user:alice,session:s-bob"):
        for resume in ("", f"&lastEventId={start['alice']}"):
            async with client.stream(
                "GET", f"{server.api}/stream?channels={channels}&token={tokens['alice']}{resume}"
            ) as response:
                await response.aread()
                assert (response.status_code, response.json()["code"]) == (403, "FORBIDDEN"), channels


async def test_two_users_memory(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """On the memory broker, each of two users receives only what is theirs, live and replayed."""
    await two_users(start_server(**AUTH_SETTINGS), client)


async def test_token_expiry_ends_stream_and_fresh_token_resumes(
    start_server: ServerFactory, client: httpx.AsyncClient
) -> None:
    """A stream ends cleanly (after a token_expired event) when its token expires; a fresh token resumes it
    with nothing lost, and the expired one is refused."""
    server = start_server(**AUTH_SETTINGS)
    short = token(sub="alice", sid="s-alice", exp_in=5)  # margin for a busy machine to open the stream first
    async with open_stream(client, _url(server, "alice", short), timeout=10) as stream:
        assert stream.response.status_code == 200
        await stream.next_event()
        first = await _publish(client, server, "user:alice", {"n": 1})
        assert (await stream.next_event()).id == first
        tail = await stream.wait_end(timeout=15)
        assert stream.ended
        assert [m.event for m in tail if m.event != "heartbeat"] == ["token_expired"]
    missed = [await _publish(client, server, "user:alice", {"n": n}) for n in (2, 3)]
    async with client.stream("GET", _url(server, "alice", short, first)) as refused:
        await refused.aread()
        assert (refused.status_code, refused.json()["code"]) == (401, "TOKEN_EXPIRED")
    fresh = token(sub="alice", sid="s-alice", exp_in=300)
    async with open_stream(client, _url(server, "alice", fresh, first), timeout=10) as resumed:
        assert resumed.response.status_code == 200
        await resumed.next_event()
        assert [m.id for m in await resumed.take(2, timeout=10)] == missed
