"""The publish path's own cost: CPU time per ``POST /publish``, in process, no sockets, no subscribers.

    .venv/bin/python bench/publish_cpu.py [--rounds 5] [--requests 4000] [--metrics off] [CHECKOUT ...]

Builds the app as ``ssehub serve`` does (the same uvicorn protocol class and options, the memory broker, the
bench's settings), runs its lifespan, and feeds the protocol complete keep-alive POSTs (the load generator's
request: ~100 bytes of event data) through a fake transport, waiting for each answer. What is measured is
everything in the hub's process that a publish costs above the kernel: HTTP parsing, the head guard, routing,
authentication, the rate limiter, the body reader, JSON, ``Hub.publish`` and the answer; what is not is the
socket reads and writes, identical for every checkout.

Each checkout (default: this one) runs in its own process with ``PYTHONPATH=<checkout>``, so an older commit
(``git worktree add /tmp/before <commit> --detach``) can be measured beside this one; the checkouts take turns,
``--rounds`` times, and the median of the rounds is printed, so that other work on the machine drifting up or
down affects every checkout alike. ``--auth`` sends an API key with every request (the "ssehub-auth" variant).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from servers import BENCH_API_KEY, ROOT, Ssehub


class _Transport(asyncio.Transport):
    """Enough of a socket transport for uvicorn's protocol: writes are counted, then dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.answers = 0
        self.last = b""
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.last = bytes(data)
        if self.last.startswith(b"HTTP/1.1 "):
            self.answers += 1

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def _request(auth: bool) -> bytes:
    data = '{"t":1764040000123456789,"s":1,"p":"' + "x" * 56 + '"}'
    body = '{"channel":"bench0","event":"bench","data":' + data + "}"
    head = (
        "POST /api/v1/events/publish HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
    )
    if auth:
        head += f"Authorization: Bearer {BENCH_API_KEY}\r\n"
    return (head + "\r\n" + body).encode()


def _config(app: Any, settings: Any) -> Any:
    """uvicorn's configuration as ``ssehub serve`` of the checkout builds it (older checkouts: plain uvicorn)."""
    import uvicorn

    import ssehub

    # Looked up in the checkout itself: the venv's editable install of another checkout would supply the module.
    if not (Path(ssehub.__file__).parent / "_server.py").exists():
        return uvicorn.Config(app, log_level="warning", proxy_headers=True)
    from ssehub._server import uvicorn_config

    return uvicorn_config(app, settings)


async def _child(requests: int, auth: bool) -> float:
    from uvicorn.lifespan.on import LifespanOn
    from uvicorn.server import ServerState

    from ssehub.app import create_app
    from ssehub.settings import Settings

    settings = Settings()
    config = _config(create_app(settings), settings)
    config.load()
    lifespan = LifespanOn(config)
    await lifespan.startup()
    try:
        protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state=lifespan.state)
        transport = _Transport()
        protocol.connection_made(transport)
        request = _request(auth)

        async def publish(count: int) -> None:
            for _ in range(count):
                answered = transport.answers
                protocol.data_received(request)
                for _ in range(100):
                    if transport.answers > answered and protocol.cycle.response_complete:
                        break
                    await asyncio.sleep(0)
                else:
                    raise RuntimeError(f"no answer after 100 loop iterations; last write {transport.last[:200]!r}")

        await publish(500)  # warm up: code paths, caches, the history filling
        if b'"channel"' not in transport.last:
            raise RuntimeError(f"unexpected answer: {transport.last[:300]!r}")
        started = time.process_time()
        await publish(requests)
        return 1e6 * (time.process_time() - started) / requests
    finally:
        await lifespan.shutdown()


def child_env(checkout: Path, metrics: bool) -> dict[str, str]:
    """The bench's ssehub settings (bench/servers.py), for ``checkout``."""
    server = Ssehub(metrics=metrics, root=checkout)
    try:
        env = server.env()
    finally:
        server.stop()  # never started: only removes its temp dir
    env["SSEHUB_LOG_LEVEL"] = "warning"
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkouts", nargs="*", type=Path, default=[ROOT])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--metrics", choices=("on", "off"), default="on")
    parser.add_argument("--auth", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        try:
            import uvloop  # as uvicorn's default loop when installed
        except ImportError:
            cost = asyncio.run(_child(args.requests, args.auth))
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                cost = runner.run(_child(args.requests, args.auth))
        print(json.dumps({"us_per_publish": cost}))
        return 0
    results: dict[Path, list[float]] = {checkout.resolve(): [] for checkout in args.checkouts}
    for _ in range(args.rounds):
        for checkout, costs in results.items():
            cmd = [sys.executable, __file__, "--child", "--requests", str(args.requests)]
            if args.auth:
                cmd.append("--auth")
            env = child_env(checkout, args.metrics == "on")
            if args.auth:
                key = {"key": BENCH_API_KEY, "scopes": ["subscribe", "publish"], "channels": ["bench*"], "name": "b"}
                env["SSEHUB_API_KEYS"] = json.dumps([key])
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=os.getcwd())
            if out.returncode:
                print(f"{checkout}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                return 1
            costs.append(json.loads(out.stdout.strip().splitlines()[-1])["us_per_publish"])
    for checkout, costs in results.items():
        shown = ", ".join(f"{cost:.1f}" for cost in costs)
        median, least = statistics.median(costs), min(costs)
        print(f"{checkout}: median {median:6.1f}, least {least:6.1f} us per publish (rounds: {shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
