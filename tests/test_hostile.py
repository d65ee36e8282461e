"""Hostile input against a real server: every attempt gets a clear 4xx JSON answer (or the documented fallback),
no injected field reaches the wire, and the hub stays healthy with nothing leaked."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ssehub.testing import SSEParser, free_port, open_stream
from tests.conftest import Server, ServerFactory
from tests.helpers import publish, wait_for_connections
from tests.rawhttp import address, api_path, parse_response, raw_exchange

pytestmark = pytest.mark.anyio


async def assert_healthy(client: httpx.AsyncClient, server: Server) -> None:
    """/health answers 200 with no stream left open, and a normal stream still delivers."""
    await wait_for_connections(client, server, 0)
    assert (await client.get(f"{server.api}/health")).status_code == 200
    async with open_stream(client, f"{server.api}/stream?channels=ok:1") as stream:
        assert (await stream.next_event()).event == "connected"
        event_id = await publish(client, server, "ok:1", "e", {"fine": True})
        assert (await stream.next_event()).id == event_id
    await wait_for_connections(client, server, 0)


def assert_json_error(response: httpx.Response, status: int, code: str) -> None:
    """A refusal in ssehub's JSON shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["code"] == code
    assert body["error"]


THOUSANDS_OF_CHANNELS = ",".join(f"c:{n}" for n in range(5000))
THOUSANDS_OF_FILTERS = "&".join(f"f{n}={n}" for n in range(3000))


@pytest.mark.parametrize(
    ("target", "status", "code"),
    [
        ("/stream?channels=a%0Db", 422, "INVALID_CHANNEL"),
        ("/stream?channels=a%0Ab", 422, "INVALID_CHANNEL"),
        ("/stream?channels=a%00b", 422, "INVALID_CHANNEL"),
        ("/stream?channels=a:1%0D%0Aevent:%20evil%0A%0Adata:%20x", 422, "INVALID_CHANNEL"),
        ("/stream?channels=a:1&download_id=4%0A2", 422, "INVALID_FILTER"),
        ("/stream?channels=a:1&download_id=4%0D2", 422, "INVALID_FILTER"),
        ("/stream?channels=a:1&download_id=4%002", 422, "INVALID_FILTER"),
        ("/stream?channels=a:1&x%0Aid:%201=1", 422, "INVALID_FILTER"),
        ("/downloads/4%0Devent:evil", 422, "INVALID_FILTER"),
        ("/downloads/4%00", 422, "INVALID_FILTER"),
        (f"/stream?channels={THOUSANDS_OF_CHANNELS}", 422, "TOO_MANY_CHANNELS"),
        (f"/stream?channels=a:1&{THOUSANDS_OF_FILTERS}", 422, "INVALID_FILTER"),
    ],
    ids=[
        "channel-cr",
        "channel-lf",
        "channel-nul",
        "channel-crlf-injection",
        "filter-lf",
        "filter-cr",
        "filter-nul",
        "filter-name-lf",
        "path-id-cr",
        "path-id-nul",
        "5000-channels",
        "3000-filters",
    ],
)
async def test_control_characters_and_floods_in_stream_requests(
    start_server: ServerFactory, client: httpx.AsyncClient, target: str, status: int, code: str
) -> None:
    """Percent-encoded CR, LF and NUL in channels and filters, and floods of them, are refused with a 4xx JSON."""
    server = start_server()
    response = await client.get(f"{server.api}{target}")
    assert_json_error(response, status, code)
    assert "evil" not in response.headers.get("content-type", "")
    await assert_healthy(client, server)


@pytest.mark.parametrize(
    "target",
    [
        b"/stream?channels=a\rb",
        b"/stream?channels=a\x00b",
        b"/stream?channels=a:1&download_id=4\x002",
    ],
    ids=["raw-cr", "raw-nul", "raw-nul-filter"],
)
async def test_raw_control_characters_in_the_request_line(
    start_server: ServerFactory, client: httpx.AsyncClient, target: bytes
) -> None:
    """Raw CR or NUL in a request target is a malformed request: 400 BAD_REQUEST as JSON, then the hub is fine."""
    server = start_server()
    raw = await raw_exchange(server, b"GET " + api_path(server).encode() + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = parse_response(raw)
    assert status == 400
    assert json.loads(body)["code"] == "BAD_REQUEST"
    assert headers["connection"] == "close"
    await assert_healthy(client, server)


async def test_raw_lf_in_the_request_line_ends_it_and_injects_nothing(
    start_server: ServerFactory, client: httpx.AsyncClient
) -> None:
    """A raw LF ends the request line (the parser is lenient there): what follows becomes a header, so the stream
    is for the channels before the LF only and nothing after it reaches the wire."""
    server = start_server()
    reader, writer = await asyncio.open_connection(*address(server))
    wire = b""
    try:
        writer.write(b"GET " + api_path(server).encode() + b"/stream?channels=a:1\nevent: evil\r\nHost: x\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(5):
            while b"event: connected" not in wire or b"\n\n" not in wire.partition(b"event: connected")[2]:
                piece = await reader.read(65536)
                if not piece:
                    break
                wire += piece
    finally:
        writer.close()
    head, _, body = wire.partition(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.1 400"):  # a stricter parser refuses it: as good
        assert json.loads(body)["code"] == "BAD_REQUEST"
    else:
        assert head.startswith(b"HTTP/1.1 200")
        events = SSEParser().feed(body.replace(b"\r\n", b"\n"))  # chunk sizes become comments or ignored lines
        connected = [e for e in events if e.event == "connected"]
        assert json.loads(connected[0].data)["channels"] == ["a:1"]
    assert b"evil" not in wire
    await assert_healthy(client, server)


@pytest.mark.parametrize(
    "header",
    [b"Last-Event-ID: 1-0\x00id: 666", b"Last-Event-ID: 1-0\rid: 666", b"Last\x00-Event-ID: 1-0"],
    ids=["nul-in-value", "bare-cr-in-value", "nul-in-name"],
)
async def test_raw_control_characters_in_headers(
    start_server: ServerFactory, client: httpx.AsyncClient, header: bytes
) -> None:
    """A raw NUL or bare CR in a header is a malformed request: 400 BAD_REQUEST as JSON, no stream opened."""
    server = start_server()
    request = (
        b"GET " + api_path(server).encode() + b"/stream?channels=a:1 HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n"
    )
    status, _, body = parse_response(await raw_exchange(server, request))
    assert status == 400
    assert json.loads(body)["code"] == "BAD_REQUEST"
    await assert_healthy(client, server)


async def read_opening(client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None) -> list[bytes]:
    """The raw bytes of a stream's opening frames (until a whole ``reset`` event arrived, or 5 s passed)."""
    chunks: list[bytes] = []
    parser = SSEParser()
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                async for chunk in response.aiter_raw():
                    chunks.append(chunk)
                    # Chunks split anywhere: stop once the parser has dispatched the reset event itself.
                    if any(message.event == "reset" for message in parser.feed(chunk)):
                        break
    return chunks


@pytest.mark.parametrize(
    ("query", "header"),
    [
        ("lastEventId=1-0%0D%0Aevent:%20evil%0Adata:%20x%0A%0A", None),
        ("lastEventId=1-0%0Aid:%20666", None),
        ("lastEventId=%00", None),
        ("lastEventId=garbage", None),
        (None, "garbage; id=666"),
        (None, "99999999999999999999999-0"),
        (None, "1-0 event: evil"),
    ],
    ids=[
        "query-crlf-fields",
        "query-lf-id",
        "query-nul",
        "query-garbage",
        "header-garbage",
        "header-huge",
        "header-sp",
    ],
)
async def test_garbage_last_event_id_gets_reset_and_injects_nothing(
    start_server: ServerFactory, client: httpx.AsyncClient, query: str | None, header: str | None
) -> None:
    """A malformed Last-Event-ID is answered with the documented reset; no injected field reaches the wire."""
    server = start_server()
    url = f"{server.api}/stream?channels=a:1" + (f"&{query}" if query else "")
    chunks = await read_opening(client, url, {"Last-Event-ID": header} if header else None)
    wire = b"".join(chunks)
    parser = SSEParser()
    events = parser.feed(wire)
    assert [e.event for e in events] == ["connected", "reset"]
    reset = json.loads(events[1].data)
    assert reset["reason"] == "invalid_last_event_id"
    assert reset["channels"] == ["a:1"]
    assert b"evil" not in wire
    assert b"666" not in wire
    # Every line on the wire is a field ssehub writes, never one taken from the request.
    fields = {line.split(b":", 1)[0] for line in wire.split(b"\n") if line}
    assert fields <= {b"retry", b"id", b"event", b"data"}
    await assert_healthy(client, server)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"channel": "a:1", "event": "e", "data": NaN}', "INVALID_JSON"),
        (b'{"channel": "a:1", "event": "e", "data": -Infinity}', "INVALID_JSON"),
        (b'{"channel": "a:1", "event": "e", "data": 1e999}', "INVALID_DATA"),
        (b'{"channel": "a:1", "event": "e", "data": ' + b"9" * 5000 + b"}", "INVALID_JSON"),
        (b'{"channel": "a:1", "event": "e", "data": ' + b"[" * 30000 + b"]" * 30000 + b"}", "INVALID_JSON"),
        (b'{"channel": "a:1", "event": "e", "data": ' + b'{"a":' * 900 + b"1" + b"}" * 900 + b"}", None),
        (b'{"channel": "a:1", "event": "e", "data": "\xff\xfe"}', "INVALID_JSON"),
        (b'{"channel": "a:1", "event": "e\\nevent: evil", "data": 1}', "INVALID_EVENT"),
        (b'{"channel": "a:1", "event": "e\\u0000", "data": 1}', "INVALID_EVENT"),
        (b'{"channel": "a:1\\r\\nid: 5", "event": "e", "data": 1}', "INVALID_CHANNEL"),
        (b'{"channel": "a:1", "event": "e", "data": 1, "id": "5\\nevent: x"}', "INVALID_BODY"),
        (b"[" + b"1," * 20000 + b"1]", "INVALID_BODY"),
    ],
    ids=[
        "nan",
        "infinity",
        "huge-float",
        "huge-int",
        "deep-30000",
        "deep-900",
        "not-utf8",
        "event-lf",
        "event-nul",
        "channel-crlf",
        "extra-id-field",
        "not-an-object",
    ],
)
async def test_hostile_publish_bodies(
    start_server: ServerFactory, client: httpx.AsyncClient, body: bytes, code: str | None
) -> None:
    """Publish bodies with NaN, huge numbers, deep nesting or control characters get a 422 JSON (or, if valid
    JSON that the hub can store, a 201), never a 500; the hub stays healthy."""
    server = start_server()
    response = await client.post(f"{server.api}/publish", content=body, headers={"Content-Type": "application/json"})
    if code is None:
        assert response.status_code in (201, 422), response.text
        if response.status_code == 422:
            assert response.json()["code"] in {"INVALID_DATA", "INVALID_JSON"}
    else:
        assert_json_error(response, 422, code)
    await assert_healthy(client, server)


async def test_field_separators_in_data_stay_inside_one_data_line(
    start_server: ServerFactory, client: httpx.AsyncClient
) -> None:
    """Data holding CR, LF, NUL and SSE field names arrives as the same value and forges no field."""
    server = start_server()
    data = {"text": "a\r\n\r\nevent: evil\nid: 666\rdata: x\x00", "nested": ["\n\n", "retry: 1"]}
    async with open_stream(client, f"{server.api}/stream?channels=a:1") as stream:
        await stream.next_event()
        event_id = await publish(client, server, "a:1", "e", data)
        message = await stream.next_event()
        assert (message.id, message.event) == (event_id, "e")
        assert json.loads(message.data) == data
        assert message.retry is None
    await assert_healthy(client, server)


async def test_megabyte_query_string_is_refused(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """A request line of hundreds of KiB answers 414 URI_TOO_LONG as JSON; one of megabytes at worst is closed."""
    server = start_server()
    head = b"GET " + api_path(server).encode() + b"/stream?channels=" + b"a" * 300_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    status, headers, body = parse_response(await raw_exchange(server, head, chunks=30))
    assert (status, json.loads(body)["code"]) == (414, "URI_TOO_LONG")
    assert headers["connection"] == "close"
    huge = b"GET " + api_path(server).encode() + b"/stream?channels=" + b"a" * 4_000_000 + b" HTTP/1.1\r\n\r\n"
    raw = await raw_exchange(server, huge, chunks=100)
    assert raw == b"" or parse_response(raw)[0] == 414
    await assert_healthy(client, server)


async def test_megabyte_header_block_is_refused(start_server: ServerFactory, client: httpx.AsyncClient) -> None:
    """A megabyte of headers (many, or one long one) answers 431 HEADERS_TOO_LARGE as JSON."""
    server = start_server()
    start = b"GET " + api_path(server).encode() + b"/stream HTTP/1.1\r\nHost: x\r\n"
    many = start + b"".join(b"X-Pad-%d: %s\r\n" % (n, b"v" * 900) for n in range(1000)) + b"\r\n"
    one = start + b"Cookie: " + b"c" * 900_000 + b"\r\n\r\n"
    for request in (many, one):
        status, _, body = parse_response(await raw_exchange(server, request, chunks=50))
        assert (status, json.loads(body)["code"]) == (431, "HEADERS_TOO_LARGE")
    await assert_healthy(client, server)


# -- a burst against `ssehub serve` in its own process: memory and open sockets ----------------------------


def _process_stats(pid: int) -> tuple[int, int]:
    """Resident memory (KiB) and open file descriptors of a process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def serve_process() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m ssehub serve` on a free port with short timeouts; yields its API URL and the process."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSEHUB_")}
    env.update(SSEHUB_PORT=str(port), SSEHUB_LOG_LEVEL="warning", SSEHUB_HEADER_TIMEOUT="2", SSEHUB_BODY_TIMEOUT="2")
    process = subprocess.Popen(
        [sys.executable, "-m", "ssehub", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    api = f"http://127.0.0.1:{port}/api/v1/events"
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{api}/health", timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ssehub serve did not start: {process.stderr.read() if process.stderr else b''!r}")
            time.sleep(0.05)
        yield api, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if process.stderr:
            process.stderr.close()


async def _bad_requests(api: str, count: int) -> None:
    """``count`` bad requests of many kinds, 25 at a time (bounded in number and, per request, in time)."""
    base, _, port_and_path = api.rpartition(":")
    port = int(port_and_path.split("/")[0])
    path = "/" + port_and_path.split("/", 1)[1]
    kinds: list[tuple[str, bytes]] = [
        ("GET", f"{path}/stream?channels=a%0Db".encode()),
        ("GET", f"{path}/stream?channels={THOUSANDS_OF_CHANNELS[:20000]}".encode()),
        ("GET", f"{path}/stream?channels=a:1&{THOUSANDS_OF_FILTERS[:8000]}".encode()),
        ("POST", f"{path}/publish".encode()),
        ("GET", f"{path}/downloads/%00".encode()),
        ("RAW", b"GET " + path.encode() + b"/stream?channels=a\x00 HTTP/1.1\r\n\r\n"),
        ("RAW", b"GET " + path.encode() + b"/stream HTTP/1.1\r\nX: " + b"v" * 100_000 + b"\r\n\r\n"),
        ("RAW", b"POST " + path.encode() + b"/publish HTTP/1.1\r\nContent-Length: 300000\r\n\r\n" + b"x" * 300_000),
        ("RAW", b"GET " + path.encode() + b"/stream?channels=" + b"a" * 200_000 + b" HTTP/1.1\r\n\r\n"),
    ]
    semaphore = asyncio.Semaphore(25)
    limits = httpx.Limits(max_connections=25, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:

        async def one(n: int) -> None:
            method, target = kinds[n % len(kinds)]
            async with semaphore:
                if method == "RAW":
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    try:
                        with contextlib.suppress(ConnectionError):
                            writer.write(target)
                            await writer.drain()
                        with contextlib.suppress(ConnectionError, TimeoutError):
                            await asyncio.wait_for(reader.read(65536), 5)
                    finally:
                        writer.close()
                elif method == "POST":
                    response = await client.post(f"{base}:{port}{target.decode()}", content=b'{"data": NaN}')
                    assert response.status_code in (422, 429)  # 429: the publish rate limit may answer first
                else:
                    response = await client.get(f"{base}:{port}{target.decode()}")
                    assert 400 <= response.status_code < 500, response.text

        await asyncio.gather(*(one(n) for n in range(count)))


async def test_burst_of_bad_requests_leaves_memory_and_sockets_where_they_were(
    serve_process: tuple[str, subprocess.Popen[bytes]],
) -> None:
    """A thousand hostile requests leave `ssehub serve` healthy, its sockets back where they were and its memory
    within a small bound."""
    api, process = serve_process
    await _bad_requests(api, 200)  # warm up allocator pools and caches first
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(f"{api}/health")).status_code == 200
    await asyncio.sleep(0.5)
    rss_before, fds_before = _process_stats(process.pid)
    await _bad_requests(api, 1000)
    deadline = time.monotonic() + 15
    while True:  # lingering closes end within seconds: wait for the sockets to go (bounded)
        rss_after, fds_after = _process_stats(process.pid)
        if fds_after <= fds_before or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert fds_after <= fds_before, (fds_before, fds_after)
    assert rss_after - rss_before < 24 * 1024, (rss_before, rss_after)  # KiB: no growth per request
    async with httpx.AsyncClient(timeout=5) as client:
        status = (await client.get(f"{api}/health")).json()
        assert status["active_connections"] == 0
        async with open_stream(client, f"{api}/stream?channels=ok:1") as stream:
            assert (await stream.next_event()).event == "connected"
    assert process.poll() is None


async def test_serve_guards_request_heads(serve_process: tuple[str, subprocess.Popen[bytes]]) -> None:
    """`ssehub serve` runs uvicorn with the head guard: an oversized head gets 431 JSON, a stalled one 408 JSON."""
    api, _ = serve_process
    port = int(api.rsplit(":", 1)[1].split("/")[0])
    path = "/" + api.rsplit(":", 1)[1].split("/", 1)[1]

    async def exchange(data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(data)
            await writer.drain()
            received = b""
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(8):
                    while piece := await reader.read(65536):
                        received += piece
            return received
        finally:
            writer.close()

    big = await exchange(f"GET {path}/health HTTP/1.1\r\nHost: x\r\nX-Big: {'v' * 100_000}\r\n\r\n".encode())
    status, _, body = parse_response(big)
    assert (status, json.loads(body)["code"]) == (431, "HEADERS_TOO_LARGE")
    stalled = await exchange(f"GET {path}/health HTTP/1.1\r\nHost: x\r\n".encode())  # SSEHUB_HEADER_TIMEOUT=2
    status, _, body = parse_response(stalled)
    assert (status, json.loads(body)["code"]) == (408, "REQUEST_TIMEOUT")
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(f"{api}/health")).status_code == 200
