"""Raw-socket HTTP for tests that must control every byte (slow or oversized requests, clients that do not read)."""

from __future__ import annotations

import asyncio
import contextlib

from tests.conftest import Server


def address(server: Server) -> tuple[str, int]:
    """Host and port of a test server."""
    host, port = server.base_url.removeprefix("http://").split(":")
    return host, int(port)


def api_path(server: Server) -> str:
    """The API prefix as a path (for raw requests)."""
    return server.api.removeprefix(server.base_url)


async def raw_exchange(server: Server, data: bytes, *, timeout: float = 5.0, chunks: int = 1) -> bytes:
    """Send ``data`` on a fresh socket (in ``chunks`` writes, all before reading anything), then read until the
    server closes or ``timeout`` passes; return what was read (possibly ``b""`` after a reset)."""
    return (await send_then_read(server, data, timeout=timeout, chunks=chunks))[1]


async def send_then_read(server: Server, data: bytes, *, timeout: float = 5.0, chunks: int = 1) -> tuple[bool, bytes]:
    """Like :func:`raw_exchange`, and also whether every byte could be sent (a simple client whose write fails
    with a reset gives up without reading the answer)."""
    reader, writer = await asyncio.open_connection(*address(server))
    received = bytearray()
    sent_all = True
    try:
        size = max(1, -(-len(data) // chunks))
        try:
            for start in range(0, len(data), size):
                writer.write(data[start : start + size])
                await writer.drain()
        except ConnectionError:
            sent_all = False  # the server refused early; read what it answered
        try:
            async with asyncio.timeout(timeout):
                while piece := await reader.read(65536):
                    received += piece
        except (TimeoutError, ConnectionError):
            pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return sent_all, bytes(received)


async def read_to_eof(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (an answer may come in several segments)."""
    received = bytearray()
    async with asyncio.timeout(timeout):
        with contextlib.suppress(ConnectionResetError):  # a close after the answer may come as a reset
            while piece := await reader.read(65536):
                received += piece
    return bytes(received)


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lowercased names) and body of the first HTTP/1.1 answer in ``raw``."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return status, headers, body
