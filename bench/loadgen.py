"""Build and run the C load generator (``bench/loadgen.c``) pinned to the load core; parse its JSON lines."""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from servers import BENCH, Server

SOURCE = BENCH / "loadgen.c"
BINARY = BENCH / "build" / "loadgen"
LOAD_CORE = "1"


def build() -> Path:
    """Compile the load generator with gcc (-Wall -O2) when the source is newer than the binary."""
    if not BINARY.exists() or BINARY.stat().st_mtime < SOURCE.stat().st_mtime:
        BINARY.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-Wall", "-Wextra", "-Werror", "-O2", "-o", str(BINARY), str(SOURCE)], check=True)
    return BINARY


def run(
    server: Server,
    mode: str,
    subs: int,
    *,
    channels: int = 1,
    args: tuple[str, ...] = (),
    timeout: float = 120.0,
    on_line: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run one load generator invocation against the server; return its JSON lines (stops it at the timeout)."""
    cmd = [
        "taskset", "-c", LOAD_CORE, str(BINARY), "--port", str(server.port), "--mode", mode,
        "--subs", str(subs), "--channels", str(channels), "--src-addrs", "8",
        "--sub-path", server.sub_path, "--pub-path", server.pub_path,
        "--server-pids", ",".join(str(pid) for pid in server.pids()), *args,
    ]  # fmt: skip
    if server.pub_raw:
        cmd.append("--pub-raw")
    if server.header:
        cmd += ["--header", server.header]
    lines: list[dict[str, Any]] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.send_signal(signal.SIGTERM)  # it finishes the step it is in and prints "done"
                deadline = time.monotonic() + 15
                lines.append({"type": "error", "error": f"load generator stopped after {timeout:.0f} s"})
                continue
            if not sel.select(timeout=min(left, 1.0)):
                if proc.poll() is not None:
                    break
                continue
            chunk = proc.stdout.read1(65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                if not raw.strip():
                    continue
                line = json.loads(raw)
                lines.append(line)
                if on_line:
                    on_line(line)
        proc.wait(timeout=15)
    finally:
        sel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        lines.append({"type": "error", "error": f"load generator exited {proc.returncode}: {err.strip()[:500]}"})
    if proc.stderr:
        proc.stderr.close()
    proc.stdout.close()
    return lines


def of_type(lines: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("type") == kind]
