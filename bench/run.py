"""`make bench`: ssehub against nginx + nchan and the naive baseline, on loopback, in about 12 minutes.

Every server is pinned to core 0 (``taskset -c 0``, Redis included), the C load generator and this script to
core 1. Scenarios, each on a fresh server: idle capacity, fan-out ladder, many channels, light load, reconnect
storm, and fan-out + light load again on the Redis broker. Two more fan-out ladders on Redis show where its time
goes: ``ssehub-redis-worker`` publishes from worker processes with ``ssehub.Publisher`` (bench/relay.py, on core 1
with the load generator) instead of over HTTP; ``ssehub-redis-core1`` moves redis-server to core 1 (beside the
load generator), leaving core 0 to the hub alone. ``ssehub-nometrics`` repeats the memory-broker fan-out ladder
with ``SSEHUB_METRICS=off`` right after the one with metrics on (the default). Results go to
``bench/results/<date>.json`` and ``.md``, plots to ``bench/results/*.png``, and the table into
``docs/performance.md``. ``BENCH_QUICK=1`` runs everything at a small scale (< 2 min) into ``bench/results/tmp/``
for a smoke test and leaves the docs alone.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import loadgen
import report
from servers import BENCH, ROOT, Naive, Nchan, Redis, Server, Ssehub, process_tree, python_version, rss_kib

RESULTS = BENCH / "results"


@dataclass(frozen=True)
class Scale:
    idle_subs: int
    hold: float
    fanout_subs: int
    fanout_rates: tuple[float, ...]  # events/s; doubling, then --refine bisections
    redis_variant_rates: tuple[float, ...]  # the two extra Redis ladders skip the rungs every system passes
    naive_rates: tuple[float, ...]
    refine: int
    step: float
    many_subs: int
    many_rate: float
    many_step: float
    light_subs: int
    light_rate: float
    light_step: float
    storm_subs: int
    storm_behind: int
    budget_s: float  # scenarios that would start after this are skipped


FULL = Scale(
    idle_subs=10_000, hold=3, fanout_subs=1000, fanout_rates=(10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120),
    redis_variant_rates=(160, 320, 640, 1280, 2560, 5120),
    naive_rates=(1, 2, 4, 8, 16, 32, 64), refine=3, step=5, many_subs=10_000, many_rate=2000, many_step=8,
    light_subs=100, light_rate=10, light_step=8, storm_subs=10_000, storm_behind=50, budget_s=900,
)  # fmt: skip
QUICK = Scale(
    idle_subs=1000, hold=1, fanout_subs=200, fanout_rates=(50, 200, 800), redis_variant_rates=(200, 800),
    naive_rates=(5, 20, 80), refine=0, step=1.5, many_subs=1000, many_rate=500, many_step=1.5, light_subs=20,
    light_rate=10, light_step=1.5, storm_subs=1000, storm_behind=20, budget_s=140,
)  # fmt: skip

#: Systems of the fan-out ladder: the peers, ssehub on each broker, and the two Redis variants.
REDIS_VARIANTS = ("ssehub-redis-worker", "ssehub-redis-core1")
#: Worker processes publishing with ssehub.Publisher in the ssehub-redis-worker ladder.
RELAYS = 4

P99_MAX_MS = 100.0


class Bench:
    def __init__(self, scale: Scale, quick: bool) -> None:
        self.scale = scale
        self.quick = quick
        self.started = time.monotonic()
        self.results: dict[str, Any] = {"scenarios": {}}
        self.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    # ---- helpers ----
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def log(self, msg: str) -> None:
        print(f"[bench {self.elapsed():6.1f}s] {msg}", flush=True)

    def naive_cap(self, subs: int) -> int:
        """The naive design holds two descriptors per subscriber (client + its Redis connection)."""
        return min(subs, (self.nofile - 500) // 2)

    def record(self, scenario: str, system: str, fn: Callable[[], dict[str, Any]]) -> None:
        out = self.results["scenarios"].setdefault(scenario, {})
        if self.elapsed() > self.scale.budget_s:
            out[system] = {"skipped": f"time budget of {self.scale.budget_s:.0f} s used up"}
            self.log(f"{scenario}/{system}: skipped (time budget)")
            return
        self.log(f"{scenario}/{system} ...")
        try:
            out[system] = fn()
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            out[system] = {"error": f"{type(exc).__name__}: {exc}"}
        self.log(f"{scenario}/{system}: {report.one_line(scenario, out[system])}")

    @staticmethod
    def start(system: str) -> tuple[Server, Redis | None]:
        redis = None
        if system == "naive" or system.startswith("ssehub-redis"):
            redis = Redis(core="1" if system == "ssehub-redis-core1" else "0").start()
        try:
            if system == "nchan":
                server: Server = Nchan()
            elif system == "naive":
                assert redis is not None
                server = Naive(redis)
            else:
                server = Ssehub(redis, auth=system == "ssehub-auth", metrics=system != "ssehub-nometrics")
            server.start()
        except BaseException:
            if redis:
                redis.stop()
            raise
        return server, redis

    def with_server(self, system: str, body: Callable[[Server], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            server, redis = self.start(system)
            try:
                result = body(server)
                if any(line.get("type") == "error" for line in result.get("loadgen", [])):
                    result["server_log_tail"] = server.log_tail()
                return result
            finally:
                server.stop()
                if redis:
                    redis.stop()

        return run

    # ---- scenarios ----
    def idle(self, system: str) -> dict[str, Any]:
        subs = self.naive_cap(self.scale.idle_subs) if system == "naive" else self.scale.idle_subs

        def body(server: Server) -> dict[str, Any]:
            # warm the code paths once, so the "before" figure is not the cold process
            loadgen.run(server, "ladder", 10, args=("--rates", "5", "--step", "1", "--drain", "2"), timeout=30)
            time.sleep(0.5)
            own = process_tree(server.pid)
            redis = getattr(server, "redis", None)
            before, redis_before = rss_kib(own), redis.rss_kib() if redis else 0
            after: dict[str, int] = {}

            def on_line(line: dict[str, Any]) -> None:
                if line.get("type") == "ready":
                    time.sleep(1.0)
                    after["own"] = rss_kib(process_tree(server.pid))
                    after["redis"] = redis.rss_kib() if redis else 0

            lines = loadgen.run(
                server, "idle", subs, timeout=120, on_line=on_line,
                args=("--hold", str(self.scale.hold), "--connect-inflight", "500", "--connect-timeout", "60"),
            )  # fmt: skip
            connect = loadgen.of_type(lines, "connect")
            idle = loadgen.of_type(lines, "idle")
            result: dict[str, Any] = {"subs": subs, "loadgen": lines}
            if connect:
                opened = connect[0]["open"]
                result.update(
                    open=opened, failed=connect[0]["failed"], opens_per_s=connect[0]["opens_per_s"],
                    connect_seconds=connect[0]["seconds"], rss_before_kib=before, rss_after_kib=after.get("own"),
                )  # fmt: skip
                if opened and "own" in after:
                    result["kib_per_conn"] = round((after["own"] - before) / opened, 2)
                    if redis:
                        result["redis_kib_per_conn"] = round((after["redis"] - redis_before) / opened, 2)
            if idle:
                result.update(alive=idle[0]["received"], closed_during_hold=idle[0]["closed_during_hold"])
            return result

        return self.with_server(system, body)()

    def ladder(self, system: str, subs: int, channels: int, rates: tuple[float, ...], step: float, *,
               refine: int = 0, stop: bool = True, pub_conns: int = 8, drain: float = 3,
               loss_only: bool = False) -> dict[str, Any]:  # fmt: skip
        def body(server: Server) -> dict[str, Any]:
            args = [
                "--rates", ",".join(f"{r:g}" for r in rates), "--step", f"{step:g}", "--drain", f"{drain:g}",
                "--refine", str(refine), "--p99-max-ms", f"{P99_MAX_MS:g}", "--pub-conns", str(pub_conns),
                "--connect-inflight", "500", "--connect-timeout", "60", "--warmup", "1" if step >= 4 else "0.5",
            ]  # fmt: skip
            args += self.variant_args(system, server)
            if not stop:
                args.append("--no-stop")
            if loss_only:
                args.append("--loss-only")
            budget = 90 + (len(rates) + refine) * (step + drain + 4)
            lines = loadgen.run(server, "ladder", subs, channels=channels, args=tuple(args), timeout=budget)
            steps = loadgen.of_type(lines, "step")
            result: dict[str, Any] = {"subs": subs, "channels": channels, "steps": steps, "loadgen": lines}
            passing = [s for s in steps if s["pass"]]
            best = max(passing, key=lambda s: s["rate"]) if passing else None
            result["sustained_rate"] = best["rate"] if best else 0.0
            result["sustained_deliveries_per_s"] = round(best["deliveries_per_s"]) if best else 0
            result["at_sustained"] = best
            # every rung passed: the server's limit is above the ladder, not at its top
            result["ladder_top_reached"] = bool(best and stop and best["rate"] >= max(rates))
            loss_free = [s for s in steps if s.get("loss_free")]
            peak = max((s["deliveries_per_s"] for s in loss_free), default=0)
            result["loss_free_peak_deliveries_per_s"] = round(peak)
            failing = [s for s in steps if not s["pass"] and (best is None or s["rate"] > best["rate"])]
            first_fail = min(failing, key=lambda s: s["rate"]) if failing else None
            # a step the load generator could barely drive says more about it than about the server
            result["loadgen_bound"] = bool(first_fail and first_fail["loadgen_cpu_pct"] >= 90) or bool(
                not failing and steps and max(s["loadgen_cpu_pct"] for s in steps) >= 90
            )
            connect = loadgen.of_type(lines, "connect")
            if connect:
                result["opens_per_s"] = connect[0]["opens_per_s"]
            return result

        return self.with_server(system, body)()

    @staticmethod
    def variant_args(system: str, server: Server) -> list[str]:
        """Load generator options of the Redis variants: worker relays instead of HTTP, or Redis's own CPU."""
        assert isinstance(server, Ssehub) or system not in REDIS_VARIANTS
        if system == "ssehub-redis-worker":
            assert isinstance(server, Ssehub)
            return ["--pub-exec", server.relay_command(), "--pub-conns", str(RELAYS), "--pub-window", "64"]
        if system == "ssehub-redis-core1":
            assert isinstance(server, Ssehub)
            assert server.redis is not None
            return ["--redis-pids", ",".join(str(pid) for pid in server.redis.pids())]
        return []

    def fanout(self, system: str) -> dict[str, Any]:
        naive = system == "naive"
        rates = self.scale.naive_rates if naive else self.scale.fanout_rates
        if system in REDIS_VARIANTS:
            rates = self.scale.redis_variant_rates
        # the baseline misses p99 < 100 ms even at 1 event/s: find its loss-free peak instead of stopping there
        # 32 publishing connections: one POST in flight each, so a busy server's slower answers do not cap the rate
        return self.ladder(system, self.scale.fanout_subs, 1, rates, self.scale.step, refine=self.scale.refine,
                           loss_only=naive, pub_conns=32)  # fmt: skip

    def many(self, system: str) -> dict[str, Any]:
        subs = self.naive_cap(self.scale.many_subs) if system == "naive" else self.scale.many_subs
        result = self.ladder(system, subs, subs, (self.scale.many_rate,), self.scale.many_step, stop=False,
                             pub_conns=32, drain=5)  # fmt: skip
        result["step"] = result["steps"][0] if result["steps"] else None
        return result

    def light(self, system: str) -> dict[str, Any]:
        result = self.ladder(system, self.scale.light_subs, 1, (self.scale.light_rate,), self.scale.light_step,
                             stop=False, pub_conns=2)  # fmt: skip
        result["step"] = result["steps"][0] if result["steps"] else None
        return result

    def storm(self, system: str) -> dict[str, Any]:
        def body(server: Server) -> dict[str, Any]:
            subs = self.scale.storm_subs
            # Every subscriber reconnects at once (as after a node died): as many handshakes in flight as clients.
            lines = loadgen.run(
                server, "storm", subs, timeout=150,
                args=("--behind", str(self.scale.storm_behind), "--warm", "5", "--connect-inflight", str(subs),
                      "--connect-timeout", "60", "--drain", "10"),
            )  # fmt: skip
            storm = loadgen.of_type(lines, "storm")
            result: dict[str, Any] = {"subs": subs, "behind": self.scale.storm_behind, "loadgen": lines}
            if storm:
                result.update(storm[0])
            return result

        return self.with_server(system, body)()

    # ---- the run ----
    def run(self) -> dict[str, Any]:
        self.results.update(metadata(self.scale, self.quick))
        for system in ("ssehub", "nchan", "naive"):
            self.record("idle", system, lambda s=system: self.idle(s))
        # "ssehub-nometrics" (SSEHUB_METRICS=off) right after "ssehub", so that both meet the machine as it is
        # then: counting must cost nothing measurable per delivery (issue 9).
        for system in ("ssehub", "ssehub-nometrics", "nchan", "naive", "ssehub-redis", *REDIS_VARIANTS):
            self.record("fanout", system, lambda s=system: self.fanout(s))
        for system in ("ssehub", "nchan", "ssehub-redis", "naive"):
            self.record("light", system, lambda s=system: self.light(s))
        for system in ("ssehub", "nchan", "naive"):
            self.record("many_channels", system, lambda s=system: self.many(s))
        for system in ("ssehub", "nchan", "ssehub-redis"):
            self.record("storm", system, lambda s=system: self.storm(s))
        self.results["scenarios"].setdefault("storm", {})["naive"] = {
            "skipped": "the naive design keeps no history, so it cannot resume"
        }
        # "ssehub-auth": the memory-broker hub with an API key on every stream and publish (issue 7: the figures
        # must not move). Last, so that it never pushes another scenario out of the time budget.
        self.record("light", "ssehub-auth", lambda: self.light("ssehub-auth"))
        self.record("fanout", "ssehub-auth", lambda: self.fanout("ssehub-auth"))
        self.results["targets"] = report.targets(self.results)
        self.results["duration_s"] = round(self.elapsed(), 1)
        return self.results


def metadata(scale: Scale, quick: bool) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "quick": quick,
        "scale": asdict(scale),
        "machine": {
            "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "python": python_version(),
            "rlimit_nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        },
        "pinning": {
            "servers": "taskset -c 0 (hub, nginx master+worker, uvicorn, and every redis-server except the one of "
                       "ssehub-redis-core1)",
            "load": f"taskset -c {loadgen.LOAD_CORE} (C load generator with its publisher, this script, the worker "
                    "relays of ssehub-redis-worker and the redis-server of ssehub-redis-core1)",
        },
        "systems": {
            "ssehub": Ssehub.version(), "nchan": Nchan.version(), "naive": Naive.version(), "redis": Redis.version(),
        },
        "method": {
            "event_data_bytes": 100, "p99_limit_ms": P99_MAX_MS,
            "sustained": "highest publish rate with zero loss, no order violation, no dropped subscriber, "
                         "p99 < 100 ms and >= 95% of the target publish rate reached",
            "latency_clock": "CLOCK_MONOTONIC in one process: the publisher and the subscribers are the load generator",
        },
    }


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (1 << 20, 65536, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return
        except (ValueError, OSError):
            continue


def render(path: Path) -> int:
    """Re-render the markdown, plots and docs section from a results JSON (``run.py --render FILE``)."""
    results = json.loads(path.read_text())
    outdir = path.parent
    plots = report.plots(results, outdir)
    (outdir / f"{path.stem}.md").write_text(report.markdown(results, plots, outdir))
    if not results.get("quick"):
        report.update_docs(ROOT / "docs" / "performance.md", results, plots)
    print(f"bench: rendered {outdir / path.stem}.md and {len(plots)} plots")
    return 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--render":
        return render(Path(sys.argv[2]))
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    scale = QUICK if quick else FULL
    raise_nofile()  # inherited by every server and the load generator
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {int(loadgen.LOAD_CORE)})

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # a shell that starts us in the background may have set SIGINT to "ignore": Ctrl-C must still clean up
    signal.signal(signal.SIGINT, signal.default_int_handler)
    loadgen.build()
    if not (ROOT / "ssehub" / "app.py").exists():
        print("bench: ssehub/app.py does not exist yet", file=sys.stderr)
        return 2
    bench = Bench(scale, quick)
    try:
        results = bench.run()
    except KeyboardInterrupt:
        print("bench: interrupted; every server started was stopped", file=sys.stderr)
        return 130
    outdir = RESULTS / "tmp" if quick else RESULTS
    outdir.mkdir(parents=True, exist_ok=True)
    stem = ("quick-" if quick else "") + results["date"][:10]
    slim = strip_lines(results)
    (outdir / f"{stem}.json").write_text(json.dumps(slim, indent=1) + "\n")
    plots = report.plots(slim, outdir)
    table = report.markdown(slim, plots, outdir)
    (outdir / f"{stem}.md").write_text(table)
    if not quick:
        report.update_docs(ROOT / "docs" / "performance.md", slim, plots)
    print(table)
    print(f"bench: wrote {outdir / stem}.json, .md and {len(plots)} plots in {results['duration_s']} s")
    return 0


def strip_lines(results: dict[str, Any]) -> dict[str, Any]:
    """Drop the raw load generator lines already summarised (keep them only where something failed)."""
    slim = json.loads(json.dumps(results))
    for per_system in slim["scenarios"].values():
        for result in per_system.values():
            lines = result.get("loadgen")
            if lines is None:
                continue
            errors = [line for line in lines if line.get("type") == "error"]
            result["loadgen_done"] = next((line for line in lines if line.get("type") == "done"), None)
            del result["loadgen"]
            if errors:
                result["loadgen_errors"] = errors
    return slim


if __name__ == "__main__":
    sys.exit(main())
