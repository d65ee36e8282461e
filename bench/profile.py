"""`make bench-profile`: where ssehub's time goes during fan-out, sampled with py-spy.

Starts ssehub (memory broker, or Redis with ``BENCH_PROFILE_BROKER=redis``) pinned to core 0, holds 1,000
subscribers from the C load generator on core 1,
publishes at a fixed rate (``BENCH_PROFILE_RATE`` events/s, default 200) for ~10 s while ``py-spy record`` samples
the hub, and writes ``bench/results/tmp/profile-<rate>.svg`` (flame graph), ``.txt`` (raw stacks) and prints the
functions and lines with the most samples. py-spy needs ptrace rights (root, or CAP_SYS_PTRACE).

Each step also prints the hub's CPU time per published event, read from /proc: on a busy machine a steadier
figure than throughput. ``BENCH_PROFILE_SPY=0`` skips py-spy (only the CPU figures); with Redis,
``BENCH_PROFILE_REDIS_CORE=1`` moves redis-server to core 1 and ``BENCH_PROFILE_PUBLISH=worker`` publishes from 4
worker processes with ``ssehub.Publisher`` (bench/relay.py) instead of over HTTP.

To compare: ``BENCH_PROFILE_SUBS`` subscribers instead of 1,000 (1 subscriber: the publish path's cost per
event alone), ``BENCH_PROFILE_METRICS=off`` serves with ``SSEHUB_METRICS=off``, ``BENCH_PROFILE_ROOT=<checkout>``
serves the ssehub of another checkout (e.g. a ``git worktree`` of an older commit), ``BENCH_PROFILE_STEP``
seconds of publishing (default 10), ``BENCH_PROFILE_PUB_CONNS`` publishing connections (default 8; the
fan-out ladder of ``make bench`` uses 32).
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import loadgen
from servers import BENCH, ROOT, Redis, Ssehub

OUT = BENCH / "results" / "tmp"
PY_SPY = ROOT / ".venv" / "bin" / "py-spy"


#: Where a sample's time goes, by the first marker found in its stack (a stack may hold several: the memory
#: broker fans out inside the publish request, so the fan-out is looked for before the request).
PHASES = (
    ("flush: writes to subscribers", ("Flusher._flush", "Hub._flush", "_drain_then_write")),
    ("fan-out: frames into buffers", ("Hub._on_event", "Hub._on_events")),
    (
        "publish requests: HTTP in, routing, auth, body, answer",
        # py-spy sometimes reads a resumed task's stack without its outer frames: match the inner ones too
        ("run_asgi", "HttpToolsProtocol", "RequestResponseCycle", "starlette/", "_publish (", "read_body",
         "Hub.publish", "MemoryBroker.publish", "Timeout."),
    ),
)


def phase_of(stack: str) -> str:
    for name, markers in PHASES:
        if any(marker in stack for marker in markers):
            return name
    return "event loop and the rest"


def summarize(raw: Path, top: int = 15, us_per_event: float | None = None) -> str:
    """Self samples by phase, by function and by line from py-spy's raw (collapsed stack) output; with the
    hub's CPU per event, the phases also in microseconds per event."""
    by_func: collections.Counter[str] = collections.Counter()
    by_line: collections.Counter[str] = collections.Counter()
    by_phase: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        by_line[leaf] += n
        by_func[leaf.rsplit(":", 1)[0] + ")"] += n
        by_phase[phase_of(stack)] += n
    if not total:
        return "no samples"
    out = [f"{total} samples (the hub's busy time; idle waits are not sampled)", "", "time by phase:"]
    for name, n in by_phase.most_common():
        share = n / total
        cost = f"  ~{share * us_per_event:6.0f} us per event" if us_per_event else ""
        out.append(f"  {100 * share:5.1f}%{cost}  {name}")
    out += ["", "self time by function:"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in by_func.most_common(top)]
    out += ["", "self time by line:"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in by_line.most_common(top)]
    return "\n".join(out)


def main() -> int:
    rate = os.environ.get("BENCH_PROFILE_RATE", "200")
    subs = int(os.environ.get("BENCH_PROFILE_SUBS", "1000"))
    step_s = float(os.environ.get("BENCH_PROFILE_STEP", "10"))
    root = Path(os.environ.get("BENCH_PROFILE_ROOT", str(ROOT))).resolve()
    metrics = os.environ.get("BENCH_PROFILE_METRICS", "on") != "off"
    pub_conns = os.environ.get("BENCH_PROFILE_PUB_CONNS", "")
    loadgen.build()
    OUT.mkdir(parents=True, exist_ok=True)
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {int(loadgen.LOAD_CORE)})
    use_redis = os.environ.get("BENCH_PROFILE_BROKER") == "redis"
    redis = Redis(core=os.environ.get("BENCH_PROFILE_REDIS_CORE", "0")).start() if use_redis else None
    spy = os.environ.get("BENCH_PROFILE_SPY", "1") != "0"
    name = f"profile-{'redis-' if redis else ''}{rate}" + (f"-{subs}subs" if subs != 1000 else "")
    name += ("" if metrics else "-nometrics") + ("" if root == ROOT else f"-{root.name}")
    raw, svg = OUT / f"{name}.txt", OUT / f"{name}.svg"
    server: Ssehub | None = None
    spies: list[subprocess.Popen[bytes]] = []
    try:
        server = Ssehub(redis, metrics=metrics, root=root).start()
        print(f"serving {root} (metrics {'on' if metrics else 'off'}), {subs} subscribers, {rate} events/s")
        for fmt, path in (("raw", raw), ("flamegraph", svg)) if spy else ():
            spies.append(subprocess.Popen(
                [str(PY_SPY), "record", "-p", str(server.pid), "-d", f"{step_s + 3:g}", "-r", "250", "-f", fmt,
                 "-o", str(path), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
        extra: list[str] = []
        if redis is not None and os.environ.get("BENCH_PROFILE_PUBLISH") == "worker":
            extra += ["--pub-exec", server.relay_command(), "--pub-window", "64"]
        if redis is not None and redis.core != server.core:
            extra += ["--redis-pids", ",".join(str(pid) for pid in redis.pids())]
        lines = loadgen.run(server, "ladder", subs, timeout=90 + 2 * step_s,
                            args=("--rates", f"{rate},{rate}", "--step", f"{step_s / 2:g}", "--no-stop", "--pub-conns",
                                  pub_conns or ("4" if "--pub-exec" in extra else "8"), *extra))  # fmt: skip
        for spy in spies:
            spy.wait(timeout=30)
    finally:
        for spy in spies:
            if spy.poll() is None:
                spy.kill()
                spy.wait()
        if server:
            server.stop()
        if redis:
            redis.stop()
    for step in loadgen.of_type(lines, "step"):
        print(f"{step['rate']:g} ev/s x {subs}: {step['deliveries_per_s']:,.0f} deliveries/s, lost {step['lost']}, "
              f"p50 {step['p50_ms']} ms, p99 {step['p99_ms']} ms, server CPU {step['server_cpu_pct']}% "
              f"({step.get('server_cpu_us_per_event')} us per event), Redis on core 1 {step.get('redis_cpu_pct')}%, "
              f"worker relays {step.get('relay_cpu_pct')}%, events per read {step.get('events_per_read')}, "
              f"load generator CPU {step.get('loadgen_cpu_pct')}%, published {step.get('publish_rate')}/s")  # fmt: skip
    if not spy:
        return 0
    if raw.exists():
        costs = [step["server_cpu_us_per_event"] for step in loadgen.of_type(lines, "step")]
        print(summarize(raw, us_per_event=sum(costs) / len(costs) if costs else None))
        print(f"\nflame graph: {svg}")
        return 0
    print("bench-profile: py-spy wrote nothing (does it have ptrace rights?)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
