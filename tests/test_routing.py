"""Stream routing: the lookup table that dispatches stream opens agrees with Starlette's own route matching."""

from __future__ import annotations

import httpx
import pytest
from starlette.routing import Match, Route

from ssehub import Hub
from ssehub.app import API
from ssehub.endpoints import StreamEndpoint, StreamTable
from tests.conftest import ServerFactory, make_settings

PATHS = [
    "/stream",
    "/stream/",
    "/streams",
    "/queue",
    "/queue/x",
    "/downloads/dl-1",
    "/downloads/a.b:c_d-e",
    "/downloads/",
    "/downloads",
    "/downloads/a/b",
    "/downloads/%2F",
    "/health",
    "/publish",
    "",
    "/",
]


@pytest.mark.parametrize("path", PATHS)
def test_table_matches_as_starlette_does(path: str) -> None:
    """For every path, the table finds the endpoint and parameters Starlette's matchers find, or none."""
    hub = Hub(make_settings())
    routes = [r for r in API.routes(hub) if isinstance(r, Route) and isinstance(r.app, StreamEndpoint)]
    table = StreamTable([(r.path, r.app) for r in routes if isinstance(r.app, StreamEndpoint)])
    expected = None
    for route in routes:
        match, child = route.matches({"type": "http", "path": path, "method": "GET", "root_path": ""})
        if match is Match.FULL:
            expected = (route.app, child["path_params"])
            break
    assert table.find(path) == expected


def test_table_leaves_other_shapes_to_starlette() -> None:
    """A route with a parameter that is not the last segment is not in the table (Starlette matches it)."""
    hub = Hub(make_settings())
    endpoint = StreamEndpoint(hub)
    table = StreamTable([("/rooms/{room}/events", endpoint), ("/a/{x}/{y}", endpoint)])
    assert table.find("/rooms/r1/events") is None
    assert table.find("/a/1/2") is None


@pytest.mark.anyio
async def test_stream_paths_outside_the_table_answer_json(start_server: ServerFactory) -> None:
    """A nested download id is 404 and a POST to a stream path 405, both as JSON, on both writers' apps."""
    server = start_server()
    async with httpx.AsyncClient(timeout=10) as client:
        nested = await client.get(f"{server.api}/downloads/a/b")
        post = await client.post(f"{server.api}/queue")
    assert (nested.status_code, nested.json()["code"]) == (404, "NOT_FOUND")
    assert (post.status_code, post.json()["code"]) == (405, "METHOD_NOT_ALLOWED")


@pytest.mark.anyio
async def test_repeated_query_parameters_resolve_as_before(start_server: ServerFactory) -> None:
    """``channels`` given twice takes the last one, and a filter given twice is refused (422)."""
    server = start_server()
    async with httpx.AsyncClient(timeout=10) as client:
        twice = await client.get(f"{server.api}/stream?download_id=1&download_id=2")
        async with client.stream("GET", f"{server.api}/stream?channels=nope&channels=queue:updates") as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    assert '"channels":["queue:updates"]' in line.replace(" ", "")
                    break
    assert (twice.status_code, twice.json()["code"]) == (422, "INVALID_FILTER")
