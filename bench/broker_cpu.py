"""The Redis broker's own cost per event, in CPU time: publish in bursts and receive over pub/sub, no fan-out.

    .venv/bin/python bench/broker_cpu.py [redis://127.0.0.1:6379/0]

Starts its own redis-server on a free port when no URL is given. For bursts of 1 (publishes one after
another) and 16 (concurrent publishes, as from many HTTP requests at once) it publishes 4,000 events on one
channel whose history is full (so every publish trims), waits until the broker delivered all of them to a
no-op hub callback, and prints the CPU time of this process and of redis-server per event. CPU time, unlike
throughput, stays comparable when other work shares the machine; run it against two checkouts with
``PYTHONPATH=<checkout>`` to compare them.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
from collections.abc import Sequence

import redis
from servers import Redis

from ssehub.brokers.redis import RedisBroker
from ssehub.events import Event

EVENTS = 4000


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def measure(url: str, burst: int) -> tuple[float, float]:
    """Hub-process and redis-server CPU microseconds per event for one burst size."""
    received = [0]

    def deliver(event: Event) -> None:
        received[0] += 1

    def deliver_many(events: Sequence[Event]) -> None:
        received[0] += len(events)

    broker = RedisBroker(url, prefix=f"cpu{burst}-{os.getpid()}")
    if hasattr(broker, "accept_batches"):  # so that an older checkout can be measured too
        broker.accept_batches(deliver_many)
    await broker.start(deliver)
    admin = redis.Redis.from_url(url)
    try:
        await broker.subscribe("bench0")
        data = '{"t":1,"s":2,"p":"' + "x" * 60 + '"}'

        async def run(rounds: int) -> None:
            received[0] = 0
            for _ in range(rounds):
                await asyncio.gather(*(broker.publish("bench0", "bench", data) for _ in range(burst)))
            async with asyncio.timeout(30):
                while received[0] < rounds * burst:
                    await asyncio.sleep(0.0005)

        await run(1100 // burst + 1)  # fill the history past its bound of 1,000
        cpu0, redis0 = _cpu(), _redis_cpu(admin)
        rounds = EVENTS // burst
        await run(rounds)
        count = rounds * burst
        return 1e6 * (_cpu() - cpu0) / count, 1e6 * (_redis_cpu(admin) - redis0) / count
    finally:
        admin.close()
        await broker.stop()


def main() -> int:
    own = None if len(sys.argv) > 1 else Redis().start()
    url = sys.argv[1] if len(sys.argv) > 1 else own.url if own else ""
    try:
        for burst in (1, 16):
            hub, server = asyncio.run(measure(url, burst))
            print(f"burst {burst:3d}: hub process {hub:6.1f} us/event, redis-server {server:6.1f} us/event")
    finally:
        if own is not None:
            own.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
