"""Measure a graceful shutdown with many open streams (a measurement, not a test: nothing is asserted on time).

Starts ``python -m ssehub serve`` (this checkout) on a free loopback port, opens N streams with raw asyncio
sockets, sends SIGTERM and reports how long the process took to exit and how each stream ended: cleanly (the
chunked body's last chunk, then EOF) or cut (a reset, or EOF without the last chunk).

    python scripts/measure_shutdown.py --streams 10000
    python scripts/measure_shutdown.py --streams 10000 --workers 2 --broker-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def open_stream(port: int, opened: list[asyncio.StreamReader]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /api/v1/events/stream?channels=measure HTTP/1.1\r\nHost: measure\r\n\r\n")
    data = b""
    while b"event: connected" not in data:
        chunk = await reader.read(4096)
        if not chunk:
            raise ConnectionError(f"closed before the stream opened: {data[:200]!r}")
        data += chunk
    opened.append(reader)
    writers.append(writer)


writers: list[asyncio.StreamWriter] = []


async def read_to_end(reader: asyncio.StreamReader) -> str:
    tail = b""
    try:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return "clean" if tail.endswith(b"0\r\n\r\n") else "cut"
            tail = (tail + chunk)[-16:]
    except ConnectionError:
        return "reset"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--broker-url", default="memory://")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the server inherits it too
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSEHUB_")}
    env.update(
        PYTHONPATH=str(ROOT),
        SSEHUB_BROKER_URL=args.broker_url,
        SSEHUB_MAX_CONNECTIONS=str(args.streams + 100),
        SSEHUB_SHUTDOWN_GRACE=str(args.grace),
        SSEHUB_LOG_LEVEL="warning",
        SSEHUB_MAX_STREAMS_PER_CLIENT="0",  # every stream comes from 127.0.0.1
    )
    command = [sys.executable, "-m", "ssehub", "serve", "--port", str(port), "--workers", str(args.workers)]
    server = subprocess.Popen(command, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                await open_stream(port, [])
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    print("server did not start", file=sys.stderr)
                    return 1
                await asyncio.sleep(0.2)
        readers: list[asyncio.StreamReader] = []
        started = time.monotonic()
        for first in range(0, args.streams, 500):
            batch = range(first, min(first + 500, args.streams))
            await asyncio.gather(*(open_stream(port, readers) for _ in batch))
        print(f"opened {len(readers)} streams in {time.monotonic() - started:.1f} s")
        ends = [asyncio.create_task(read_to_end(reader)) for reader in readers]
        stopped = time.monotonic()
        server.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*ends)
        all_ended = time.monotonic() - stopped
        code = await asyncio.to_thread(server.wait, args.grace + 30)
        exited = time.monotonic() - stopped
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    print(f"all streams ended {all_ended:.2f} s after SIGTERM; the server exited after {exited:.2f} s (status {code})")
    print(
        f"clean ends: {results.count('clean')}, cut without the last chunk: {results.count('cut')}, "
        f"resets: {results.count('reset')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
