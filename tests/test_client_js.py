"""The hub serves the browser client (package data) at {prefix}/client.js and its siblings, cacheably."""

from __future__ import annotations

import re

import httpx
import pytest

from ssehub.client_assets import CACHE_CONTROL, CLIENT_FILES, read_static
from tests.conftest import Server

pytestmark = pytest.mark.anyio


async def test_client_js_is_served_as_javascript_with_cache_headers(server: Server, client: httpx.AsyncClient) -> None:
    """GET {prefix}/client.js answers the package's ssehub.js as application/javascript with an ETag."""
    response = await client.get(f"{server.api}/client.js")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/javascript; charset=utf-8"
    assert response.headers["cache-control"] == CACHE_CONTROL
    assert re.fullmatch(r'"[0-9a-f]{32}"', response.headers["etag"])
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.content == read_static("ssehub.js")
    assert "export class SSEHubClient" in response.text


@pytest.mark.parametrize("path", sorted(CLIENT_FILES))
async def test_every_client_file_is_served_with_its_type(server: Server, client: httpx.AsyncClient, path: str) -> None:
    """Each client file (module, declarations, React hooks) is served with its own media type and bytes."""
    filename, media_type = CLIENT_FILES[path]
    response = await client.get(f"{server.api}{path}")
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.content == read_static(filename)
    assert int(response.headers["content-length"]) == len(response.content)


async def test_a_current_copy_gets_304(server: Server, client: httpx.AsyncClient) -> None:
    """A request whose If-None-Match names the current ETag (strong, weak or in a list) gets an empty 304."""
    etag = (await client.get(f"{server.api}/client.js")).headers["etag"]
    for header in (etag, f"W/{etag}", f'"old", {etag}', "*"):
        response = await client.get(f"{server.api}/client.js", headers={"if-none-match": header})
        assert response.status_code == 304, header
        assert response.content == b""
        assert response.headers["etag"] == etag
    stale = await client.get(f"{server.api}/client.js", headers={"if-none-match": '"old"'})
    assert stale.status_code == 200
    assert stale.content == read_static("ssehub.js")


async def test_head_and_wrong_method(server: Server, client: httpx.AsyncClient) -> None:
    """HEAD answers the headers without the body; POST is refused with ssehub's JSON 405."""
    head = await client.head(f"{server.api}/client.js")
    assert head.status_code == 200
    assert head.headers["content-type"].startswith("application/javascript")
    assert head.content == b""
    post = await client.post(f"{server.api}/client.js")
    assert post.status_code == 405
    assert post.json()["code"] == "METHOD_NOT_ALLOWED"


def test_the_modules_import_nothing() -> None:
    """The served modules have no import statements: they run in a browser without a bundler or import map."""
    for filename in ("ssehub.js", "ssehub-react.js"):
        source = read_static(filename).decode()
        assert not re.search(r"^\s*import\s", source, re.MULTILINE), filename
        assert "require(" not in source, filename
