"""The fast stream path's contract with uvicorn, and the portable writer wherever that contract does not hold.

``ssehub/_uvicorn.py`` relies on attributes of uvicorn's httptools request cycle. The first test pins them
against the installed uvicorn: if an upgrade renames one, this fails (and ``pyproject.toml`` bounds uvicorn to
the versions it passed on). The others show that a hub whose streams cannot use the fast path still streams.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from ssehub import Hub, _uvicorn, create_app
from ssehub._types import Receive, Scope, Send
from ssehub.testing import open_stream, running_server
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


async def test_uvicorn_request_cycle_has_what_the_fast_path_uses() -> None:
    """Behind uvicorn's httptools send is a cycle with transport, flow control, disconnect, chunking and wake-up."""
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        cycle = getattr(send, "__self__", None)
        seen["class"] = (type(cycle).__module__, type(cycle).__name__)
        seen["http_version"] = scope["http_version"]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        seen["chunked_encoding"] = cycle.chunked_encoding  # type: ignore[union-attr]
        seen["write_paused"] = cycle.flow.write_paused  # type: ignore[union-attr]
        seen["drain"] = asyncio.iscoroutinefunction(cycle.flow.drain)  # type: ignore[union-attr]
        seen["disconnected"] = cycle.disconnected  # type: ignore[union-attr]
        seen["message_event"] = isinstance(cycle.message_event, asyncio.Event)  # type: ignore[union-attr]
        seen["transport_write"] = callable(cycle.transport.write)  # type: ignore[union-attr]
        cycle.transport.write(_uvicorn.chunk(b"direct\n"))  # type: ignore[union-attr]
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    with running_server(app) as base_url:
        async with httpx.AsyncClient() as client:
            response = await client.get(base_url + "/")
    assert response.text == "direct\n"  # a chunk written to the transport is part of the chunked body
    assert seen == {
        "class": ("uvicorn.protocols.http.httptools_impl", "RequestResponseCycle"),
        "http_version": "1.1",
        "chunked_encoding": True,
        "write_paused": False,
        "drain": True,
        "disconnected": False,
        "message_event": True,
        "transport_write": True,
    }
    assert _uvicorn.version_supported(), "the installed uvicorn is outside the range the fast path was tested on"


async def test_receive_is_ready_when_the_body_came_with_the_head() -> None:
    """A body sent with its head is waiting in uvicorn's receive when the app starts; once taken, nothing waits."""
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        seen["before"] = _uvicorn.receive_ready(receive)
        seen["message"] = dict(await receive())
        seen["after"] = _uvicorn.receive_ready(receive)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with running_server(app) as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
            async with asyncio.timeout(5):
                answer = await reader.read()
        finally:
            writer.close()
    assert answer.startswith(b"HTTP/1.1 204")
    assert seen == {
        "before": True,
        "message": {"type": "http.request", "body": b"hello", "more_body": False},
        "after": False,
    }


async def test_receive_is_not_ready_elsewhere() -> None:
    """Any receive but uvicorn's httptools one is never taken for ready (the body is then read under its timeout)."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    assert not _uvicorn.receive_ready(receive)


def test_version_bound() -> None:
    """The fast path serves only uvicorn versions inside the tested range."""
    low, high = _uvicorn.TESTED
    assert _uvicorn.version_supported(low)
    assert _uvicorn.version_supported((high[0], high[1] - 1, 9))
    assert not _uvicorn.version_supported((low[0], low[1] - 1, 0))
    assert not _uvicorn.version_supported(high)
    assert not _uvicorn.version_supported((1, 0, 0))


async def _stream_through(hub: Hub, expected_writer: str) -> None:
    """Serve ``hub`` standalone, open a stream, publish, and check the event arrives and which writer served it."""
    with running_server(create_app(hub=hub)) as base_url:
        api = base_url + hub.settings.prefix
        async with httpx.AsyncClient(timeout=5) as client, open_stream(client, f"{api}/stream?channels=a") as stream:
            await stream.next_event()
            [connection] = list(hub._connections)
            assert connection.writer == expected_writer
            response = await client.post(f"{api}/publish", json={"channel": "a", "event": "e", "data": {"n": 1}})
            assert response.status_code == 201
            message = await stream.next_event()
            assert (message.id, message.event, message.data) == (response.json()["id"], "e", '{"n":1}')


async def test_fast_path_disabled_streams_through_the_portable_writer() -> None:
    """With SSEHUB_FAST_PATH=false the standalone server streams correctly through the portable writer."""
    await _stream_through(Hub(make_settings(fast_path=False)), "portable")


async def test_uvicorn_outside_the_bound_streams_through_the_portable_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a uvicorn version outside the tested range, streams fall back to the portable writer and still work."""
    monkeypatch.setattr(_uvicorn, "_version", lambda: (9, 0, 0))
    await _stream_through(Hub(make_settings()), "portable")


async def test_standalone_streams_use_the_fast_path() -> None:
    """By default the standalone server's streams are on the fast path."""
    await _stream_through(Hub(make_settings()), "direct")


async def test_uvicorn_protocol_has_what_native_streams_use() -> None:
    """uvicorn's httptools protocol has the attributes and methods the native stream path reads or calls."""
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    config = Config(app=create_app(make_settings()))
    config.load()
    protocol = HttpToolsProtocol(config, ServerState(), {})
    protocol.on_message_begin()
    for name in (
        "parser",
        "url",
        "headers",
        "scope",
        "expect_100_continue",
        "root_path",
        "limit_concurrency",
        "cycle",
        "loop",
        "tasks",
        "flow",
        "transport",
        "access_log",
        "access_logger",
    ):
        assert hasattr(protocol, name), name
    assert isinstance(protocol.server_state.default_headers, list)
    assert callable(protocol.on_response_complete)
    for method in ("get_method", "get_http_version", "should_keep_alive", "should_upgrade"):
        assert callable(getattr(protocol.parser, method)), method


async def test_standalone_streams_under_ssehub_serve_options_are_native() -> None:
    """With ``ssehub serve``'s options the standalone server answers streams natively; with the fast path off
    or an untested uvicorn, they fall back as before."""
    from ssehub.guard import uvicorn_options

    async def through(hub: Hub) -> str:
        with running_server(create_app(hub=hub), **uvicorn_options(hub.settings)) as base_url:
            api = base_url + hub.settings.prefix
            async with httpx.AsyncClient(timeout=5) as client, open_stream(client, f"{api}/stream?channels=a") as s:
                await s.next_event()
                [connection] = list(hub._connections)
                return connection.writer

    assert await through(Hub(make_settings())) == "native"
    assert await through(Hub(make_settings(fast_path=False))) == "portable"
