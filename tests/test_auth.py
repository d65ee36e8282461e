"""Credentials and grants: pattern rules, settings validation, API keys by every source, scopes, public channels
and every misuse of a JWT, against a real server."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from ssehub.exceptions import AuthenticationError
from ssehub.grants import ChannelPatterns, Grant, session_channel, user_channel
from ssehub.redact import redact
from ssehub.settings import Settings
from ssehub.testing import free_port, open_stream
from ssehub.tokens import grant_from_claims
from tests.auth_helpers import (
    KEY_ADMIN,
    KEY_PUBLISH,
    KEY_SUBSCRIBE,
    SECRET,
    JWKSServer,
    api_keys_setting,
    claims,
    ec_key,
    forge,
    jwk,
    public_pem,
    rsa_key,
    sha256_hex,
    token,
    write_public_key,
)
from tests.conftest import Server, ServerFactory

pytestmark = pytest.mark.anyio

KEYS: list[dict[str, Any]] = [
    {"key": KEY_SUBSCRIBE, "scopes": ["subscribe"], "channels": ["download:*", "news"], "name": "reader"},
    {"sha256": sha256_hex(KEY_PUBLISH), "scopes": ["publish"], "channels": ["download:*"], "name": "worker"},
    {"key": KEY_ADMIN, "scopes": ["admin"]},
]


@pytest.fixture(params=["native", "direct"])
def writer(request: pytest.FixtureRequest) -> str:
    """Authentication happens before the writer is chosen: these tests run on the standalone app's two paths."""
    mode: str = request.param
    return mode


@pytest.fixture(scope="module")
def rsa_private() -> Any:
    """One RSA key for the module (generation is slow)."""
    return rsa_key()


# -- pattern rules ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "channel", "matches"),
    [
        ("user:u4", "user:u4", True),
        ("user:u4", "user:u42", False),
        ("user:u42", "user:u4", False),
        ("user:*", "user:u42", True),
        ("user:*", "user:", True),
        ("user:*", "users:all", False),
        ("user*", "users:all", True),
        ("*", "anything:at-all", True),
        ("download:*", "download:updates", True),
        ("download:*", "Download:updates", False),
        ("session:ab12", "session:ab12x", False),
    ],
)
def test_pattern_rules(pattern: str, channel: str, matches: bool) -> None:
    """Exact names match only themselves, a trailing star matches any suffix, a lone star everything."""
    assert ChannelPatterns.parse([pattern]).matches(channel) is matches


@pytest.mark.parametrize("pattern", ["", "**", "*user", "user:*:x", "us*er", "a b", "user:\n", "-x", "x" * 130])
def test_invalid_patterns_are_refused(pattern: str) -> None:
    """A star anywhere but at the end, or a character a channel cannot hold, is an invalid pattern."""
    with pytest.raises(ValueError, match="invalid channel pattern"):
        ChannelPatterns.parse([pattern])


def test_implicit_user_and_session_channels() -> None:
    """A subject gets user:<sub> and a session session:<sid>, exactly; an unusable id gets nothing."""
    grant = Grant.build("jwt", "jwt:u4", subject="u4", session="ab12")
    assert grant.can_subscribe("user:u4")
    assert grant.can_subscribe("session:ab12")
    assert not grant.can_subscribe("user:u42")
    assert not grant.can_subscribe("session:ab1")
    assert not grant.can_publish("user:u4")
    assert user_channel("a b") is None
    assert user_channel("x" * 124) is None  # "user:" + 124 characters is longer than 128
    assert session_channel("s\r\nid") is None
    odd = Grant.build("jwt", "jwt", subject="a,b", session="")
    assert odd.implicit == ()


def test_claims_of_the_wrong_type_are_refused() -> None:
    """Claims that are not the documented types make the token invalid rather than granting anything."""
    bad: list[dict[str, Any]] = [
        {"sub": 42},
        {"sid": ["x"]},
        {"ssehub": ["user:*"]},
        {"ssehub": {"subscribe": "user:*"}},
        {"ssehub": {"publish": ["bad pattern"]}},
        {"ssehub": {"admin": "yes"}},
    ]
    for claim_set in bad:
        with pytest.raises(AuthenticationError) as info:
            grant_from_claims({"exp": time.time() + 60, **claim_set})
        assert info.value.code == "INVALID_TOKEN"
    grant = grant_from_claims(claims(sub="u1", subscribe=["a:*"], publish=["b"], admin=True), leeway=5)
    assert grant.can_subscribe("a:x")
    assert grant.can_subscribe("user:u1")
    assert grant.can_publish("b")
    assert grant.admin
    assert grant.expires_at is not None
    assert grant.expires_at > time.time() + 300


def test_redact_hides_query_tokens() -> None:
    """Query-string token values are replaced, whatever their position; other parameters stay."""
    line = '127.0.0.1:5 - "GET /s?channels=a&token=eyJ.x.y&access_token=k HTTP/1.1" 200'
    out = redact(line)
    assert "eyJ" not in out
    assert "=k " not in out
    assert "channels=a" in out
    assert out.count("[redacted]") == 2
    assert redact("/s?TOKEN=abc") == "/s?TOKEN=[redacted]"


# -- settings -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"api_keys": [{"key": "k" * 20, "scopes": ["publish"]}]}, 'no "channels"'),
        ({"api_keys": [{"key": "short", "scopes": ["admin"]}]}, "at least 16"),
        ({"api_keys": [{"scopes": ["admin"]}]}, "exactly one of"),
        ({"api_keys": [{"key": "k" * 20, "sha256": "0" * 64, "scopes": ["admin"]}]}, "exactly one of"),
        ({"api_keys": [{"sha256": "xyz", "scopes": ["admin"]}]}, "64 hex digits"),
        (
            {
                "api_keys": [
                    {"key": "k" * 20, "scopes": ["admin"]},
                    {"sha256": sha256_hex("k" * 20), "scopes": ["admin"]},
                ]
            },
            "configured twice",
        ),
        ({"api_keys": [{"key": "k" * 20, "scopes": ["read"]}]}, "scopes"),
        ({"api_keys": [{"key": "k" * 20, "scopes": ["subscribe"], "channels": ["a*b"]}]}, "invalid channel pattern"),
        ({"public_channels": "news,bad pattern"}, "invalid channel pattern"),
        ({"jwt_algorithms": "HS256"}, "jwt_secret is not set"),
        ({"jwt_secret": SECRET, "jwt_algorithms": "none"}, "unsupported none"),
        ({"jwt_secret": "too-short"}, "at least 32"),
        ({"jwt_secret": SECRET, "jwt_algorithms": "RS256"}, "neither jwt_public_key_file"),
        ({"jwt_public_key_file": "/nonexistent/key.pem"}, "is not a file"),
        ({"jwt_jwks_url": "ftp://x/jwks"}, "https://"),
        ({"auth_cookie": "a b"}, "auth_cookie"),
    ],
)
def test_invalid_auth_settings_fail_when_built(values: dict[str, Any], message: str) -> None:
    """Bad credentials configuration fails when the settings are built, with a message naming the problem."""
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None, **values)


def test_api_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """SSEHUB_API_KEYS is JSON; the key itself never shows in the settings' repr."""
    monkeypatch.setenv("SSEHUB_API_KEYS", api_keys_setting(*KEYS))
    monkeypatch.setenv("SSEHUB_PUBLIC_CHANNELS", "news, system:*")
    settings = Settings(_env_file=None)
    assert [key.display_name for key in settings.api_keys] == [
        "reader",
        "worker",
        f"sha256:{sha256_hex(KEY_ADMIN)[:8]}",
    ]
    assert settings.public_channels == ["news", "system:*"]
    assert KEY_SUBSCRIBE not in repr(settings)


# -- API keys against a server ------------------------------------------------------------------------------


async def _status(client: httpx.AsyncClient, url: str, **kwargs: Any) -> tuple[int, dict[str, Any], httpx.Headers]:
    """Open a stream (or GET) and return status, JSON body (errors) or {} (streams), and headers."""
    async with client.stream("GET", url, **kwargs) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, response.json(), response.headers
        if response.headers["content-type"].startswith("text/event-stream"):
            async for chunk in response.aiter_raw():
                assert b"event: connected" in chunk
                break
            return 200, {}, response.headers
        await response.aread()
        return 200, response.json(), response.headers


@pytest.fixture
def keyed(start_server: ServerFactory) -> Server:
    """A server with the three API keys and one public channel."""
    return start_server(api_keys=KEYS, public_channels="news", auth_cookie="sse_auth")


async def test_api_key_sources(keyed: Server, client: httpx.AsyncClient) -> None:
    """An API key is accepted as Bearer, X-API-Key, token query parameter and the configured cookie."""
    url = f"{keyed.api}/stream?channels=download:updates"
    assert (await _status(client, url, headers={"Authorization": f"Bearer {KEY_SUBSCRIBE}"}))[0] == 200
    assert (await _status(client, url, headers={"authorization": f"bearer {KEY_SUBSCRIBE}"}))[0] == 200
    assert (await _status(client, url, headers={"X-API-Key": KEY_SUBSCRIBE}))[0] == 200
    assert (await _status(client, f"{url}&token={KEY_SUBSCRIBE}"))[0] == 200
    assert (await _status(client, url, headers={"Cookie": f"sse_auth={KEY_SUBSCRIBE}"}))[0] == 200
    status, body, _ = await _status(client, url, headers={"Cookie": f"other={KEY_SUBSCRIBE}"})
    assert (status, body["code"]) == (401, "UNAUTHORIZED")


async def test_missing_and_unknown_credentials(keyed: Server, client: httpx.AsyncClient) -> None:
    """No credentials: 401 UNAUTHORIZED with a bare Bearer challenge; an unknown key: 401 INVALID_TOKEN."""
    url = f"{keyed.api}/stream?channels=download:updates"
    status, body, headers = await _status(client, url)
    assert (status, body["code"]) == (401, "UNAUTHORIZED")
    assert headers["www-authenticate"] == 'Bearer realm="ssehub"'
    status, body, headers = await _status(client, url, headers={"X-API-Key": KEY_SUBSCRIBE + "x"})
    assert (status, body["code"]) == (401, "INVALID_TOKEN")
    assert 'error="invalid_token"' in headers["www-authenticate"]
    assert KEY_SUBSCRIBE not in json.dumps(body) + headers["www-authenticate"]
    status, body, _ = await _status(client, url, headers={"Authorization": "Bearer " + "x" * 9000})
    assert (status, body["code"]) == (401, "INVALID_TOKEN")


async def test_scopes_and_channels(keyed: Server, client: httpx.AsyncClient) -> None:
    """Subscribe keys read only their patterns, publish keys publish only to theirs, and neither does the other."""
    reader = {"X-API-Key": KEY_SUBSCRIBE}
    worker = {"Authorization": f"Bearer {KEY_PUBLISH}"}
    status, body, _ = await _status(
        client, f"{keyed.api}/stream?channels=download:updates,queue:updates", headers=reader
    )
    assert (status, body["code"]) == (403, "FORBIDDEN")
    assert "queue:updates" in body["error"]
    assert (await _status(client, f"{keyed.api}/downloads/42", headers=reader))[0] == 200
    assert (await _status(client, f"{keyed.api}/queue", headers=reader))[0] == 403
    assert (await _status(client, f"{keyed.api}/stream?channels=download:x", headers=worker))[0] == 403
    event = {"channel": "download:updates", "event": "progress", "data": {"download_id": 1}}
    published = await client.post(f"{keyed.api}/publish", json=event, headers=worker)
    assert published.status_code == 201, published.text
    for headers, status_code, code in [
        (reader, 403, "FORBIDDEN"),
        ({}, 401, "UNAUTHORIZED"),
        ({"X-API-Key": "nope-nope-nope-nope"}, 401, "INVALID_TOKEN"),
    ]:
        refused = await client.post(f"{keyed.api}/publish", json=event, headers=headers)
        assert (refused.status_code, refused.json()["code"]) == (status_code, code)
    other = await client.post(f"{keyed.api}/publish", json={**event, "channel": "queue:updates"}, headers=worker)
    assert (other.status_code, other.json()["code"]) == (403, "FORBIDDEN")


async def test_publish_ignores_query_and_cookie_tokens(keyed: Server, client: httpx.AsyncClient) -> None:
    """POST /publish takes credentials from headers only: a query token or cookie is not enough."""
    event = {"channel": "download:updates", "event": "progress", "data": 1}
    by_query = await client.post(f"{keyed.api}/publish?token={KEY_PUBLISH}", json=event)
    assert (by_query.status_code, by_query.json()["code"]) == (401, "UNAUTHORIZED")
    by_cookie = await client.post(f"{keyed.api}/publish", json=event, headers={"Cookie": f"sse_auth={KEY_PUBLISH}"})
    assert by_cookie.status_code == 401


async def test_public_channels_and_health(keyed: Server, client: httpx.AsyncClient) -> None:
    """Anonymous streams reach public channels only; /health shows details to admins only."""
    assert (await _status(client, f"{keyed.api}/stream?channels=news"))[0] == 200
    status, body, _ = await _status(client, f"{keyed.api}/stream?channels=news,download:updates")
    assert (status, body["code"]) == (401, "UNAUTHORIZED")
    assert (await _status(client, f"{keyed.api}/stream?channels=news", headers={"X-API-Key": KEY_SUBSCRIBE}))[0] == 200
    public = (await client.get(f"{keyed.api}/health")).json()
    assert "channels" not in public
    assert "broker" not in public
    assert public["status"] == "ok"
    assert "active_connections" in public
    reader = (await client.get(f"{keyed.api}/health", headers={"X-API-Key": KEY_SUBSCRIBE})).json()
    assert "channels" not in reader
    admin = (await client.get(f"{keyed.api}/health", headers={"X-API-Key": KEY_ADMIN})).json()
    assert "channels" in admin
    assert admin["broker"]["name"] == "memory"
    bad = await client.get(f"{keyed.api}/health", headers={"X-API-Key": "wrong-wrong-wrong-wrong"})
    assert (bad.status_code, bad.json()["code"]) == (401, "INVALID_TOKEN")


async def test_token_parameter_is_not_a_filter(keyed: Server, client: httpx.AsyncClient) -> None:
    """?token= authenticates and is never taken as a filter on event data."""
    worker = {"X-API-Key": KEY_PUBLISH}
    async with open_stream(client, f"{keyed.api}/stream?channels=download:updates&token={KEY_SUBSCRIBE}") as stream:
        assert (await stream.next_event()).event == "connected"
        event = {"channel": "download:updates", "event": "progress", "data": {"download_id": 7}}
        assert (await client.post(f"{keyed.api}/publish", json=event, headers=worker)).status_code == 201
        received = await stream.next_event()
        assert received.event == "progress"
        assert json.loads(received.data) == {"download_id": 7}


async def test_open_hub_serves_everyone(server: Server, client: httpx.AsyncClient) -> None:
    """With no credentials configured the hub is open, as before: any channel, publishing, full health."""
    assert (await _status(client, f"{server.api}/stream?channels=user:anyone"))[0] == 200
    event = {"channel": "user:anyone", "event": "e", "data": 1}
    assert (await client.post(f"{server.api}/publish", json=event)).status_code == 201
    assert "channels" in (await client.get(f"{server.api}/health")).json()


# -- JWT misuse ---------------------------------------------------------------------------------------------


def _payload_swap(jwt_text: str, **changes: Any) -> str:
    """The token with its payload changed and the old signature kept (tampering)."""
    header, payload, signature = jwt_text.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(changes)
    encoded = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{header}.{encoded}.{signature}"


@pytest.fixture
def hs_server(start_server: ServerFactory) -> Server:
    """A server accepting HS256 tokens for audience 'hub' from issuer 'idp', with no leeway."""
    return start_server(jwt_secret=SECRET, jwt_audience="hub", jwt_issuer="idp", jwt_leeway=0)


async def test_hs256_token_misuse(hs_server: Server, client: httpx.AsyncClient) -> None:
    """Every misuse of an HS256 token is refused with 401 and the right code; a good token is accepted."""
    good: dict[str, Any] = {"sub": "u4", "aud": "hub", "iss": "idp"}
    url = f"{hs_server.api}/stream?channels=user:u4"
    now = int(time.time())
    cases: list[tuple[str, str, str]] = [
        ("unsigned", forge({"alg": "none", "typ": "JWT"}, claims(**good), None), "INVALID_TOKEN"),
        ("expired", token(exp_in=-60, **good), "TOKEN_EXPIRED"),
        ("not yet valid", token(nbf=now + 600, **good), "INVALID_TOKEN"),
        ("issued in the future", token(**{**good, "iat": now + 600}), "INVALID_TOKEN"),
        ("wrong key", token("another-secret-" + "0123456789abcdef" * 4, **good), "INVALID_TOKEN"),
        ("wrong audience", token(**{**good, "aud": "other"}), "INVALID_TOKEN"),
        ("no audience", token(sub="u4", iss="idp"), "INVALID_TOKEN"),
        ("wrong issuer", token(**{**good, "iss": "evil"}), "INVALID_TOKEN"),
        ("no exp", token(exp_in=None, **good), "INVALID_TOKEN"),
        ("tampered", _payload_swap(token(**{**good, "sub": "u5"}), sub="u4"), "INVALID_TOKEN"),
        ("HS512 not accepted", token(alg="HS512", **good), "INVALID_TOKEN"),
        ("garbage", "a.b.c", "INVALID_TOKEN"),
    ]
    for name, bad, code in cases:
        status, body, headers = await _status(client, url, headers={"Authorization": f"Bearer {bad}"})
        assert (status, body.get("code")) == (401, code), name
        assert "invalid_token" in headers["www-authenticate"], name
        assert bad not in body["error"], name
    assert (await _status(client, f"{url}&token={token(**good)}"))[0] == 200


async def test_jwt_grants_and_pattern_edges(hs_server: Server, client: httpx.AsyncClient) -> None:
    """A token reaches exactly its own user and session channels and its claimed patterns, nothing near them."""
    jwt_text = token(sub="u4", sid="ab12", subscribe=["download:*"], publish=["download:42"], aud="hub", iss="idp")
    auth = {"Authorization": f"Bearer {jwt_text}"}
    for channels, status_code in [
        ("user:u4", 200),
        ("session:ab12", 200),
        ("download:anything", 200),
        ("user:u42", 403),
        ("user:u", 403),
        ("session:ab123", 403),
        ("downloads:x", 403),
        ("user:u4,user:u42", 403),
    ]:
        assert (await _status(client, f"{hs_server.api}/stream?channels={channels}", headers=auth))[0] == status_code, (
            channels
        )
    ok = await client.post(
        f"{hs_server.api}/publish", json={"channel": "download:42", "event": "e", "data": 1}, headers=auth
    )
    assert ok.status_code == 201
    refused = await client.post(
        f"{hs_server.api}/publish", json={"channel": "download:421", "event": "e", "data": 1}, headers=auth
    )
    assert refused.status_code == 403
    to_self = await client.post(
        f"{hs_server.api}/publish", json={"channel": "user:u4", "event": "e", "data": 1}, headers=auth
    )
    assert to_self.status_code == 403  # the implicit channels are for reading only


async def test_rs256_with_public_key_file(
    start_server: ServerFactory, client: httpx.AsyncClient, tmp_path: Path, rsa_private: Any
) -> None:
    """RS256 tokens verify with the public key file; HS256 signed with that public key, another key's
    signature and an ES256 token are refused."""
    path = write_public_key(tmp_path / "rsa.pem", rsa_private)
    server = start_server(jwt_public_key_file=path)
    url = f"{server.api}/stream?channels=user:alice"
    good = token(rsa_private, "RS256", sub="alice")
    assert (await _status(client, url, headers={"Authorization": f"Bearer {good}"}))[0] == 200
    confused = forge({"alg": "HS256", "typ": "JWT"}, claims(sub="alice"), public_pem(rsa_private))
    other = token(rsa_key(), "RS256", sub="alice")
    elliptic = token(ec_key(), "ES256", sub="alice")
    for name, bad in [("HS256 with the public key", confused), ("other key", other), ("ES256", elliptic)]:
        status, body, _ = await _status(client, url, headers={"Authorization": f"Bearer {bad}"})
        assert (status, body.get("code")) == (401, "INVALID_TOKEN"), name


async def test_es256_with_public_key_file(
    start_server: ServerFactory, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """ES256 tokens verify with an EC public key file."""
    key = ec_key()
    server = start_server(jwt_public_key_file=write_public_key(tmp_path / "ec.pem", key))
    good = token(key, "ES256", sub="bob")
    assert (await _status(client, f"{server.api}/stream?channels=user:bob&token={good}"))[0] == 200


@pytest.fixture
def jwks() -> Iterator[JWKSServer]:
    """A JWKS endpoint on loopback."""
    with JWKSServer().running() as server:
        yield server


async def test_jwks_unknown_kid_and_rotation(
    start_server: ServerFactory, client: httpx.AsyncClient, jwks: JWKSServer, rsa_private: Any
) -> None:
    """Keys come from the JWKS by kid; an unknown kid is refused, and accepted once the JWKS publishes it."""
    jwks.keys = [jwk(rsa_private, "k1", "RS256")]
    server = start_server(jwt_jwks_url=jwks.url)
    url = f"{server.api}/stream?channels=user:carol"
    first = token(rsa_private, "RS256", headers={"kid": "k1"}, sub="carol")
    assert (await _status(client, url, headers={"Authorization": f"Bearer {first}"}))[0] == 200
    assert (await _status(client, url, headers={"Authorization": f"Bearer {first}"}))[0] == 200
    assert jwks.requests == 1  # cached
    rotated = ec_key()
    second = token(rotated, "ES256", headers={"kid": "k2"}, sub="carol")
    status, body, _ = await _status(client, url, headers={"Authorization": f"Bearer {second}"})
    assert (status, body["code"]) == (401, "INVALID_TOKEN")
    assert "not in the JWKS" in body["error"]
    jwks.keys.append(jwk(rotated, "k2", "ES256"))
    deadline = time.monotonic() + 10
    while True:  # the JWKS is refetched for an unknown kid at most once a second
        status, _, _ = await _status(client, url, headers={"Authorization": f"Bearer {second}"})
        if status == 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    assert status == 200
    wrong_alg = token(rotated, "ES256", headers={"kid": "k1"}, sub="carol")
    assert (await _status(client, url, headers={"Authorization": f"Bearer {wrong_alg}"}))[0] == 401


async def test_jwks_unreachable(start_server: ServerFactory, client: httpx.AsyncClient, rsa_private: Any) -> None:
    """A JWKS that cannot be fetched (and no cached key) answers 503 AUTH_UNAVAILABLE with Retry-After."""
    server = start_server(jwt_jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json")
    jwt_text = token(rsa_private, "RS256", headers={"kid": "k1"}, sub="dave")
    status, body, headers = await _status(client, f"{server.api}/stream?channels=user:dave&token={jwt_text}")
    assert (status, body["code"]) == (503, "AUTH_UNAVAILABLE")
    assert headers["retry-after"] == "5"


async def test_query_tricks_do_not_widen_access(hs_server: Server, client: httpx.AsyncClient) -> None:
    """Repeated channels parameters and filters cannot make a stream read a channel that was not authorized."""
    jwt_text = token(sub="u4", aud="hub", iss="idp")
    base = f"{hs_server.api}/stream?token={jwt_text}"
    status, body, _ = await _status(client, f"{base}&channels=user:u4&channels=user:u42")
    assert (status, body["code"]) == (403, "FORBIDDEN")
    async with open_stream(client, f"{base}&channels=user:u42&channels=user:u4&channel=user:u42") as stream:
        assert stream.response.status_code == 200
        connected = json.loads((await stream.next_event()).data)
        assert connected["channels"] == ["user:u4"]


async def test_jwks_cached_keys_survive_an_outage(
    start_server: ServerFactory, client: httpx.AsyncClient, rsa_private: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the JWKS goes down, cached keys keep verifying tokens (even past their cache time); an unknown kid is
    still refused as INVALID_TOKEN, not an outage."""
    import ssehub.tokens

    jwks = JWKSServer()
    jwks.keys = [jwk(rsa_private, "k1", "RS256")]
    good = token(rsa_private, "RS256", headers={"kid": "k1"}, sub="erin")
    unknown = token(rsa_private, "RS256", headers={"kid": "k9"}, sub="erin")
    with jwks.running():
        server = start_server(jwt_jwks_url=jwks.url)
        url = f"{server.api}/stream?channels=user:erin"
        assert (await _status(client, f"{url}&token={good}"))[0] == 200
    monkeypatch.setattr(ssehub.tokens, "_JWKS_TTL", 0.0)  # every cached key is now stale: a refetch is tried
    monkeypatch.setattr(ssehub.tokens, "_JWKS_MIN_REFRESH", 0.0)
    assert (await _status(client, f"{url}&token={good}"))[0] == 200
    status, body, _ = await _status(client, f"{url}&token={unknown}")
    assert (status, body["code"]) == (401, "INVALID_TOKEN")


async def test_issue_token_round_trip(tmp_path: Path, rsa_private: Any) -> None:
    """issue_token makes tokens the hub accepts with the grants asked for (HS256 and RS256)."""
    from ssehub.auth import Authenticator
    from ssehub.tokens import issue_token

    hs = Authenticator(Settings(_env_file=None, jwt_secret=SECRET))
    grant = await hs.check(issue_token(SECRET, sub="u7", sid="s7", subscribe=["news"], publish=["chat:*"], ttl=60))
    assert (grant.subject, grant.session, grant.kind) == ("u7", "s7", "jwt")
    assert grant.can_subscribe("user:u7")
    assert grant.can_subscribe("session:s7")
    assert grant.can_subscribe("news")
    assert grant.can_publish("chat:1")
    assert not grant.admin
    assert grant.expires_at is not None
    assert time.time() + 50 < grant.expires_at < time.time() + 70
    rs = Authenticator(Settings(_env_file=None, jwt_public_key_file=write_public_key(tmp_path / "k.pem", rsa_private)))
    assert (await rs.check(issue_token(rsa_private, sub="u8", algorithm="RS256", admin=True))).admin


async def test_verified_tokens_are_remembered_until_they_expire() -> None:
    """A token that verified is accepted again without a new check until its exp; then it is refused as expired."""
    from ssehub.auth import Authenticator

    auth = Authenticator(Settings(_env_file=None, jwt_secret=SECRET, jwt_leeway=0))
    jwt_text = token(sub="u9", exp_in=2)
    first = await auth.check(jwt_text)
    assert await auth.check(jwt_text) is first  # remembered: the same grant object
    with pytest.raises(AuthenticationError) as tampered:
        await auth.check(_payload_swap(jwt_text, sub="u10"))
    assert tampered.value.code == "INVALID_TOKEN"
    assert first.expires_at is not None
    await asyncio.sleep(max(0.0, first.expires_at - time.time()) + 0.2)
    with pytest.raises(AuthenticationError) as expired:
        await auth.check(jwt_text)
    assert expired.value.code == "TOKEN_EXPIRED"
