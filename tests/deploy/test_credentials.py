"""Credentials through the proxies: ssehub (with an API key configured) sees the Authorization header and the
token query parameter, answers 401 itself, and the proxies' access logs never hold a token."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from ssehub.testing import open_stream
from tests.deploy.conftest import API_KEY, PREFIX, ProxyFactory, Upstream, proxy_client
from tests.deploy.proxies import KINDS, LAYOUTS, Proxy

pytestmark = [pytest.mark.anyio, pytest.mark.proxy]


@pytest.fixture(params=[(kind, layout) for kind in KINDS for layout in LAYOUTS], ids=lambda p: f"{p[0]}-{p[1]}")
def secured_proxy(request: pytest.FixtureRequest, proxies: ProxyFactory, secured_upstream: Upstream) -> Proxy:
    """Each proxy in each layout in front of the hub that requires credentials."""
    kind, layout = request.param
    return proxies(kind, layout, to=secured_upstream)


async def test_credentials_reach_ssehub(secured_proxy: Proxy) -> None:
    """Without credentials ssehub's 401 comes through; with the key in Authorization or ?token= the stream opens."""
    proxy = secured_proxy
    api = proxy.https_url + PREFIX
    channel = f"proxy.{proxy.kind}.{proxy.layout}:secured"
    bearer = {"authorization": f"Bearer {API_KEY}"}
    async with proxy_client(proxy) as client:
        refused = await client.get(f"{api}/stream?channels={channel}")
        assert refused.status_code == 401
        assert refused.json()["code"] == "UNAUTHORIZED"
        assert refused.headers["www-authenticate"].startswith("Bearer")
        for headers, query in ((bearer, ""), ({}, f"&token={API_KEY}")):
            async with open_stream(client, f"{api}/stream?channels={channel}{query}", headers=headers) as stream:
                assert stream.response.status_code == 200
                assert (await stream.next()).event == "connected"
                event_id = await _publish_with_key(client, api, channel)
                message = await stream.next_event()
                assert message.id == event_id
                assert json.loads(message.data) == {"with": "key"}


async def _publish_with_key(client: httpx.AsyncClient, api: str, channel: str) -> str:
    """Publish with the API key in the Authorization header; return the event id."""
    response = await client.post(
        f"{api}/publish",
        json={"channel": channel, "event": "note", "data": {"with": "key"}},
        headers={"authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_access_log_holds_no_token(secured_proxy: Proxy) -> None:
    """The proxy logs the stream requests, but neither the ?token= value nor the Authorization header."""
    proxy = secured_proxy
    api = proxy.https_url + PREFIX
    marker = f"proxy.{proxy.kind}.{proxy.layout}:logged"
    async with proxy_client(proxy) as client:
        for headers, query in (({"authorization": f"Bearer {API_KEY}"}, ""), ({}, f"&token={API_KEY}")):
            async with open_stream(client, f"{api}/stream?channels={marker}{query}", headers=headers) as stream:
                assert (await stream.next()).event == "connected"
    # Proxies write a request's log line when it ends; the client just closed both streams.
    async with asyncio.timeout(10):
        while proxy.access_log.read_text(errors="replace").count(f"{PREFIX}/stream") < 2:
            await asyncio.sleep(0.05)
    text = proxy.access_log.read_text(errors="replace")
    assert API_KEY not in text
