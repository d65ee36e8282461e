"""CORS against a real server: exact origins with credentials, preflights, Vary, on streams and on errors."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest
from pydantic import ValidationError

from ssehub.cors import CorsPolicy, merge_headers
from ssehub.testing import open_stream
from tests.conftest import Server, ServerFactory, make_settings
from tests.helpers import health, wait_for_connections

pytestmark = pytest.mark.anyio

APP = "https://app.example.com"
OTHER = "https://evil.example.net"


def assert_cors_for(response: httpx.Response, origin: str) -> None:
    """The answer lets ``origin``'s page read it, with credentials."""
    assert response.headers["access-control-allow-origin"] == origin
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "Origin" in response.headers["vary"]
    assert "Retry-After" in response.headers["access-control-expose-headers"]


def assert_no_cors(response: httpx.Response) -> None:
    """The answer carries no CORS permission at all."""
    assert not [name for name in response.headers if name.lower().startswith("access-control-")]


@pytest.fixture
def cors_server(start_server: ServerFactory) -> Server:
    """A server that allows one exact origin."""
    return start_server(allowed_origins=[APP, "http://localhost:3000"])


async def test_stream_for_allowed_origin_has_cors_headers_and_keeps_its_writer(
    cors_server: Server, client: httpx.AsyncClient, writer: str
) -> None:
    """An allowed origin's stream echoes the origin with credentials and still uses the fast writer when direct."""
    async with open_stream(client, f"{cors_server.api}/stream?channels=a:1", headers={"Origin": APP}) as stream:
        assert stream.response.status_code == 200
        assert_cors_for(stream.response, APP)
        assert stream.response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert (await stream.next_event()).event == "connected"
        connections = list(cors_server.hub._connections)
        assert len(connections) == 1
        assert connections[0].direct is (writer != "portable")


async def test_stream_for_other_origin_has_no_cors_headers(cors_server: Server, client: httpx.AsyncClient) -> None:
    """An origin not on the list gets no CORS headers (its page cannot read the stream), only Vary: Origin."""
    async with open_stream(client, f"{cors_server.api}/stream", headers={"Origin": OTHER}) as stream:
        assert stream.response.status_code == 200
        assert_no_cors(stream.response)
        assert stream.response.headers["vary"] == "Origin"
    response = await client.get(f"{cors_server.api}/health", headers={"Origin": "https://app.example.com.evil.net"})
    assert_no_cors(response)
    response = await client.get(f"{cors_server.api}/health", headers={"Origin": "null"})
    assert_no_cors(response)


async def test_no_allowed_origins_means_no_cors_headers(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """With SSEHUB_ALLOWED_ORIGINS empty, no answer carries a CORS header or varies by origin."""
    server = start_server()
    async with open_stream(client, f"{server.api}/stream", headers={"Origin": APP}) as stream:
        assert_no_cors(stream.response)
        assert "vary" not in stream.response.headers
    for response in (
        await client.get(f"{server.api}/health", headers={"Origin": APP}),
        await client.post(
            f"{server.api}/publish", json={"channel": "a", "event": "e", "data": 1}, headers={"Origin": APP}
        ),
        await client.get(f"{server.api}/stream?channels=bad%20name", headers={"Origin": APP}),
    ):
        assert_no_cors(response)
        assert "vary" not in response.headers
    preflight = await client.options(
        f"{server.api}/stream", headers={"Origin": APP, "Access-Control-Request-Method": "GET"}
    )
    assert preflight.status_code == 403
    assert preflight.json()["code"] == "CORS_DISABLED"
    assert_no_cors(preflight)


@pytest.mark.parametrize(
    ("path", "method", "headers"),
    [
        ("/stream", "GET", "last-event-id"),
        ("/stream", "GET", "Authorization, Last-Event-ID, Cache-Control"),
        ("/downloads/42", "GET", "x-api-key"),
        ("/publish", "POST", "content-type, authorization"),
        ("/publish", "POST", ""),
    ],
)
async def test_preflight_from_allowed_origin_is_answered(
    cors_server: Server, client: httpx.AsyncClient, path: str, method: str, headers: str
) -> None:
    """A preflight from an allowed origin gets 204 allowing the method, the requested headers and credentials."""
    request_headers = {"Origin": APP, "Access-Control-Request-Method": method}
    if headers:
        request_headers["Access-Control-Request-Headers"] = headers
    response = await client.options(f"{cors_server.api}{path}", headers=request_headers)
    assert response.status_code == 204, response.text
    assert response.headers["access-control-allow-origin"] == APP
    assert response.headers["access-control-allow-credentials"] == "true"
    assert method in response.headers["access-control-allow-methods"]
    allowed = {name.strip().lower() for name in response.headers["access-control-allow-headers"].split(",")}
    assert {"last-event-id", "authorization", "x-api-key", "content-type"} <= allowed
    assert {name.strip().lower() for name in headers.split(",") if name.strip()} <= allowed
    assert int(response.headers["access-control-max-age"]) > 0
    assert "Origin" in response.headers["vary"]


@pytest.mark.parametrize(
    ("origin", "method", "headers", "code"),
    [
        (OTHER, "GET", "", "CORS_ORIGIN_NOT_ALLOWED"),
        ("https://APP.example.com", "GET", "", "CORS_ORIGIN_NOT_ALLOWED"),
        (APP + "/", "GET", "", "CORS_ORIGIN_NOT_ALLOWED"),
        (APP, "DELETE", "", "CORS_METHOD_NOT_ALLOWED"),
        (APP, "GET", "last-event-id, x-evil", "CORS_HEADERS_NOT_ALLOWED"),
    ],
)
async def test_bad_preflight_is_refused_with_json(
    cors_server: Server, client: httpx.AsyncClient, origin: str, method: str, headers: str, code: str
) -> None:
    """A preflight for another origin, method or header answers 403 with a JSON error and no CORS permission."""
    request_headers = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        request_headers["Access-Control-Request-Headers"] = headers
    response = await client.options(f"{cors_server.api}/stream", headers=request_headers)
    assert response.status_code == 403
    assert response.json()["code"] == code
    assert response.json()["error"]
    assert "access-control-allow-origin" not in response.headers
    assert "Origin" in response.headers["vary"]


async def test_error_answers_carry_cors_headers(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """JSON errors before a stream (404, 422, 429, 503) and the other routes are readable by an allowed page."""
    server = start_server(allowed_origins=[APP], channels=["a:*", "download:*", "queue:*", "system:*"])
    origin = {"Origin": APP}
    cases = [
        (await client.get(f"{server.api}/stream?channels=secret:1", headers=origin), 404, "UNKNOWN_CHANNEL"),
        (await client.get(f"{server.api}/stream?channels=bad%0Aname", headers=origin), 422, "INVALID_CHANNEL"),
        (await client.get(f"{server.api}/nope", headers=origin), 404, "NOT_FOUND"),
        (await client.post(f"{server.api}/stream", headers=origin), 405, "METHOD_NOT_ALLOWED"),
        (await client.post(f"{server.api}/publish", content=b"{", headers=origin), 422, "INVALID_JSON"),
    ]
    for response, status, code in cases:
        assert (response.status_code, response.json()["code"]) == (status, code)
        assert_cors_for(response, APP)
    published = await client.post(
        f"{server.api}/publish", json={"channel": "a:1", "event": "e", "data": 1}, headers=origin
    )
    assert published.status_code == 201
    assert_cors_for(published, APP)
    assert_cors_for(await client.get(f"{server.api}/health", headers=origin), APP)


async def test_limit_and_unavailable_errors_carry_cors_headers(
    start_server: ServerFactory, client: httpx.AsyncClient
) -> None:
    """429 TOO_MANY_STREAMS and 503 answers to a stream request carry the CORS headers and Retry-After."""
    server = start_server(allowed_origins=[APP], max_streams_per_client=1)
    async with open_stream(client, f"{server.api}/stream", headers={"Origin": APP}) as stream:
        await stream.next_event()
        refused = await client.get(f"{server.api}/stream", headers={"Origin": APP})
        assert (refused.status_code, refused.json()["code"]) == (429, "TOO_MANY_STREAMS")
        assert refused.headers["retry-after"].isdigit()
        assert_cors_for(refused, APP)
    disabled = start_server(allowed_origins=[APP], enable_sse=False)
    response = await client.get(f"{disabled.api}/stream", headers={"Origin": APP})
    assert (response.status_code, response.json()["code"]) == (503, "SSE_DISABLED")
    assert_cors_for(response, APP)
    await wait_for_connections(client, server, 0)


async def test_many_cross_origin_streams_leave_nothing_behind(cors_server: Server, client: httpx.AsyncClient) -> None:
    """Streams from allowed and other origins open and close without leaking connections."""
    async with contextlib.AsyncExitStack() as stack:
        for n in range(6):
            origin = APP if n % 2 else OTHER
            stream = await stack.enter_async_context(
                open_stream(client, f"{cors_server.api}/stream?channels=a:{n}", headers={"Origin": origin})
            )
            await stream.next_event()
        assert (await health(client, cors_server))["active_connections"] == 6
    await wait_for_connections(client, cors_server, 0)
    await asyncio.sleep(0)


def test_policy_headers_are_exact() -> None:
    """The policy echoes only an exact listed origin, ignores repeated Origin headers, and merges Vary."""
    policy = CorsPolicy([APP])
    assert policy.headers({"headers": [(b"origin", APP.encode())]})[0] == (
        b"access-control-allow-origin",
        APP.encode(),
    )
    twice = {"headers": [(b"origin", APP.encode()), (b"origin", APP.encode())]}
    assert policy.headers(twice) == [(b"vary", b"Origin")]
    assert CorsPolicy([]).headers({"headers": [(b"origin", APP.encode())]}) == []
    assert merge_headers([(b"vary", b"Accept-Encoding")], [(b"vary", b"Origin")]) == [
        (b"vary", b"Accept-Encoding, Origin")
    ]


@pytest.mark.parametrize(
    "origins", ["*", "https://app.example.com/", "HTTPS://APP.EXAMPLE.COM", "app.example.com", "https://a.b/path"]
)
def test_origins_that_can_never_match_are_refused(origins: str) -> None:
    """SSEHUB_ALLOWED_ORIGINS takes exact serialized origins only; a wildcard or a path fails at start-up."""
    with pytest.raises(ValidationError, match="allowed_origins"):
        make_settings(allowed_origins=origins)
