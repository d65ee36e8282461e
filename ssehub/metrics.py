"""Prometheus metrics of a hub, served at ``/metrics`` (``SSEHUB_METRICS``: public, admin, off).

The hub keeps plain integer counters (:class:`ssehub.stats.HubStats`); nothing here runs per event. This
module copies them into prometheus-client metrics when they are read:

- one process: on every scrape, just before the exposition is written, so a scrape is exact;
- ``ssehub serve --workers N``: prometheus-client's multiprocess mode. The supervisor gives each worker a
  ``PROMETHEUS_MULTIPROC_DIR`` it created (and removes at exit); each worker copies its counters there every
  :data:`SYNC_INTERVAL` seconds and when it serves a scrape, and a scrape, answered by any worker, sums every
  worker's files. Counters of workers that have exited still count (a counter never goes down); the gauges
  count live workers only (the supervisor marks an exited worker dead).

The one exception to "copied when read" is the latency histogram, observed once per flush (not per event):
the age of the oldest event the flush wrote, from its id's time to the end of the write.

Embedding the API in your own app: route ``/metrics`` to ``Metrics(hub)`` (an ASGI app) yourself.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ssehub._types import Receive, Scope, Send
from ssehub.exceptions import AuthenticationError, AuthUnavailableError

if TYPE_CHECKING:
    from prometheus_client import Counter

    from ssehub.hub import Hub

#: Seconds between two copies of a worker's counters to the shared directory (multiprocess mode only).
SYNC_INTERVAL = 1.0
#: Buckets of the publish-to-write latency histogram, in seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The metrics of one hub as an ASGI app answering ``GET /metrics``; also an async context manager that,
    in multiprocess mode, copies the counters to the shared directory while it runs.

    Args:
        hub: the hub whose counters are exposed; ``hub.settings.metrics`` decides who may read them.
    """

    def __init__(self, hub: Hub) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

        self.hub = hub
        self._admin_only = hub.settings.metrics == "admin"
        # prometheus-client picks its value store once, when imported: shared files when PROMETHEUS_MULTIPROC_DIR
        # was set, in-process values otherwise. Follow its choice rather than guess it.
        self.multiprocess = values.ValueClass is not values.MutexValue
        self._registry = registry = CollectorRegistry(auto_describe=False)
        self._last: dict[tuple[str, str], int] = {}
        self._task: asyncio.Task[None] | None = None

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        self._opened = counter("ssehub_streams_opened", "Streams that started.")
        self._closed = counter(
            "ssehub_streams_closed", "Streams that ended, by reason (overflow: a slow subscriber).", ("reason",)
        )
        self._refused = counter(
            "ssehub_streams_refused", "Stream requests refused before starting, by code.", ("code",)
        )
        self._resumes = counter("ssehub_stream_resumes", "Streams resumed exactly from their Last-Event-ID.")
        self._resets = counter("ssehub_stream_resets", "Streams told to reset, by reason.", ("reason",))
        self._published = counter("ssehub_events_published", "Events published through this process.")
        self._received = counter("ssehub_events_received", "Live events the broker handed to this process.")
        self._delivered = counter("ssehub_events_delivered", "Live event deliveries to streams (events x streams).")
        self._replayed = counter("ssehub_events_replayed", "Events replayed from history to resuming streams.")
        self._bytes = counter("ssehub_bytes_written", "Stream body bytes written.")
        self._reconnects = counter("ssehub_broker_reconnects", "Reconnections of the broker's live connection.")
        self._gaps = counter("ssehub_broker_gaps", "Channels on which live delivery lost events history lacked.")
        self._open = Gauge("ssehub_streams_open", "Streams open now.", registry=registry, multiprocess_mode="livesum")
        self._broker_up = Gauge(
            "ssehub_broker_connected",
            "1 when the broker is connected (with workers: the least connected worker).",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self._latency = Histogram(
            "ssehub_publish_to_write_seconds",
            "Publish-to-write latency: the oldest event of each flush, from its id's time to the end of the write.",
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        hub.stats.latency_observer = self._latency.observe

    # -- lifetime (multiprocess mode: periodic copies) -------------------------------------------------------

    async def __aenter__(self) -> Metrics:
        if self.multiprocess:
            self._task = asyncio.create_task(self._sync_loop(), name="ssehub-metrics")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.sync()  # a worker's last counts outlive it in the shared directory

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL)
            self.sync()

    # -- reading ---------------------------------------------------------------------------------------------

    def _add(self, counter: Any, key: tuple[str, str], value: int) -> None:
        """Bring ``counter`` up to ``value`` (the plain counter's total) by adding what is new since last time."""
        last = self._last.get(key, 0)
        if value > last:
            counter.inc(value - last)
            self._last[key] = value

    def sync(self) -> None:
        """Copy the hub's counters into the prometheus-client metrics."""
        hub = self.hub
        stats = hub.stats
        self._add(self._opened, ("opened", ""), stats.opened)
        for reason, count in list(stats.closed.items()):
            self._add(self._closed.labels(reason), ("closed", reason), count)
        for code, count in list(stats.refused.items()):
            self._add(self._refused.labels(code), ("refused", code), count)
        self._add(self._resumes, ("resumes", ""), stats.resumes)
        for reason, count in list(stats.resets.items()):
            self._add(self._resets.labels(reason), ("resets", reason), count)
        self._add(self._published, ("published", ""), stats.published)
        self._add(self._received, ("received", ""), stats.received)
        self._add(self._delivered, ("delivered", ""), stats.delivered)
        self._add(self._replayed, ("replayed", ""), stats.replayed)
        self._add(self._bytes, ("bytes", ""), stats.bytes_written)
        self._add(self._gaps, ("gaps", ""), stats.gaps)
        status = hub.broker.status()
        reconnects = status.details.get("reconnects", 0)
        self._add(self._reconnects, ("reconnects", ""), reconnects if isinstance(reconnects, int) else 0)
        self._open.set(hub.active_connections)
        self._broker_up.set(1 if status.connected else 0)

    def render(self) -> bytes:
        """The Prometheus text exposition (all workers' metrics in multiprocess mode)."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        self.sync()
        if not self.multiprocess:
            return generate_latest(self._registry)
        registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    # -- HTTP ------------------------------------------------------------------------------------------------

    async def _refusal(self, scope: Scope) -> Response | None:
        """With ``SSEHUB_METRICS=admin``: the error answer for a request without admin credentials, else None."""
        if not self._admin_only:
            return None
        try:
            # Headers only: a credential in the query string would end up in access logs and proxies' logs.
            grant = await self.hub.auth.authenticate(Request(scope), query=False, cookie=False)
        except AuthenticationError as exc:
            return _error(401, exc.code, str(exc), {"WWW-Authenticate": 'Bearer realm="ssehub"'})
        except AuthUnavailableError as exc:
            return _error(503, "AUTH_UNAVAILABLE", str(exc), {"Retry-After": "5"})
        if grant.admin:
            return None
        if grant.kind == "anonymous":
            message = "metrics need credentials with the admin scope (Authorization: Bearer)"
            return _error(401, "UNAUTHORIZED", message, {"WWW-Authenticate": 'Bearer realm="ssehub"'})
        return _error(403, "FORBIDDEN", "these credentials may not read metrics (no admin scope)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response: Response | None
        if scope.get("method") not in ("GET", "HEAD"):
            response = _error(405, "METHOD_NOT_ALLOWED", "use GET", {"Allow": "GET, HEAD"})
        else:
            response = await self._refusal(scope)
        if response is None:
            from prometheus_client import CONTENT_TYPE_LATEST

            response = Response(self.render(), media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})
        await response(scope, receive, send)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """ssehub's error shape (as ``ssehub.app.error_response``, which this module cannot import: app imports it)."""
    return JSONResponse({"error": message, "code": code}, status_code=status, headers=headers)


def create_metrics(hub: Hub) -> Metrics | None:
    """The metrics app of a hub, or ``None`` when ``SSEHUB_METRICS=off``."""
    return None if hub.settings.metrics == "off" else Metrics(hub)
