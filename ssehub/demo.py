"""The live demo: a simulated download manager that publishes through the hub, and its dashboard at ``/``.

On with ``SSEHUB_DEMO=true`` (``make run`` sets it). :class:`Demo` is an async context manager that the
standalone app enters inside the hub's lifetime (nothing runs at import time). Its simulator publishes with
:meth:`Hub.publish`, exactly as an application would:

- ``download_progress`` on ``download:updates``: ``{seq, download_id, name, status, progress, size,
  downloaded, speed, eta}`` (bytes, bytes per second, seconds) for each download that moves, every tick;
- ``queue_update`` on ``queue:updates``: ``{seq, downloads: [...], active, queued, paused, completed,
  total_speed}``, the whole queue, on every change and at least every few seconds;
- ``system_notification`` on ``system:notifications``: ``{seq, message, level, time}``.

Every event carries ``seq``, one counter over the three channels, published in id order, so a subscriber of the
three channels can check that it received every event once. On a shared broker (Redis) a restarted demo reads
its last state and ``seq`` back from history and continues where it stopped.

The page (``ssehub/static/demo/``, package data) uses ssehub.js from ``{prefix}/client.js``; its buttons call
small JSON endpoints: ``GET /demo/state``, ``POST /demo/downloads`` (``{"name", "size_mb"?}``) and
``POST /demo/downloads/{id}/pause|resume|cancel``. Errors are ``{"error", "code"}`` like the rest of ssehub.
Run one process: every worker of ``--workers N`` would run its own simulator.
"""

from __future__ import annotations

import asyncio
import collections
import html
import importlib.resources
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ssehub.events import Event, EventId
from ssehub.exceptions import BrokerUnavailableError, HubNotRunningError, LimitExceededError, SSEHubError
from ssehub.hub import Hub
from ssehub.limits import read_body

__all__ = ["CHANNELS", "Demo", "Download"]

logger = logging.getLogger("ssehub.demo")

DOWNLOADS, QUEUE, SYSTEM = "download:updates", "queue:updates", "system:notifications"
#: The channels the dashboard subscribes to; ``seq`` counts over all three.
CHANNELS = (DOWNLOADS, QUEUE, SYSTEM)

Status = Literal["queued", "downloading", "paused", "completed", "cancelled"]
_UNFINISHED = ("queued", "downloading", "paused")
_STATUSES = (*_UNFINISHED, "completed", "cancelled")
_MB = 1024 * 1024
_STATIC = {"demo.css": "text/css; charset=utf-8", "demo.js": "text/javascript; charset=utf-8"}
_MAX_BODY = 4096

#: What the simulator downloads when nobody adds anything: (name, size in MB).
CATALOG = (
    ("debian-12.8.0-amd64-netinst.iso", 631),
    ("ubuntu-24.04.1-desktop-amd64.iso", 6100),
    ("blender-4.3.0-linux-x64.tar.xz", 356),
    ("podcast-episode-212.mp3", 84),
    ("nyc-taxi-trips-2024-01.parquet", 48),
    ("linux-6.12.tar.xz", 146),
    ("photos-backup-2025.zip", 2300),
    ("code_1.95.3_amd64.deb", 102),
    ("postgresql-17.2.tar.gz", 27),
    ("node-v22.11.0-linux-x64.tar.xz", 29),
    ("llama-weights-shard-03.safetensors", 4700),
    ("conference-keynote-1080p.mp4", 1450),
)
_NEWS = (
    ("info", "Mirror eu-west-2 selected: 18 ms away"),
    ("info", "Bandwidth schedule: unlimited until 18:00"),
    ("warning", "Disk space on /downloads below 20%"),
    ("info", "3 peers joined the swarm"),
    ("warning", "Mirror us-east-1 is slow; switched to us-east-2"),
    ("success", "Download cache cleaned: 1.2 GB freed"),
)


class DemoError(SSEHubError):
    """A refused demo request: ``status`` and ``code`` for the JSON answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass
class Download:
    """One simulated download (sizes in bytes, speeds in bytes per second)."""

    id: str
    name: str
    size: int
    downloaded: float = 0.0
    status: Status = "queued"
    speed: float = 0.0
    target_speed: float = 4 * _MB

    def state(self) -> dict[str, Any]:
        """The download as its events and the state endpoint show it."""
        speed = self.speed if self.status == "downloading" else 0.0
        remaining = self.size - self.downloaded
        return {
            "download_id": self.id,
            "name": self.name,
            "status": self.status,
            "progress": round(100 * self.downloaded / self.size, 1) if self.size else 100.0,
            "size": self.size,
            "downloaded": int(self.downloaded),
            "speed": int(speed),
            "eta": round(remaining / speed) if speed > 0 else None,
        }


class Demo:
    """The simulator and the dashboard's routes. Enter it inside the hub's lifetime (``async with hub, demo``).

    Args:
        hub: the hub to publish through.
        tick: seconds between simulation steps.
        max_active: downloads that run at once; the others wait in the queue.
        seed: seed of the simulator's random numbers (tests), or ``None``.
    """

    def __init__(self, hub: Hub, *, tick: float = 0.5, max_active: int = 3, seed: int | None = None) -> None:
        self.hub = hub
        self.tick = tick
        self.max_active = max_active
        self.keep_finished = 6
        self.max_unfinished = 12
        self.queue_interval = 5.0
        self.seq = 0
        self.downloads: dict[str, Download] = {}
        #: The latest notifications, so that a page opened now does not start with an empty list.
        self.notifications: collections.deque[dict[str, Any]] = collections.deque(maxlen=8)
        self._next_number = 1
        self._random = random.Random(seed)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._assets: dict[str, bytes] = {}
        self._last_queue_update = 0.0
        self._last_add = 0.0
        self._next_news = 0.0
        self.routes: list[BaseRoute] = [
            Route("/", self._page, methods=["GET"]),
            Route("/demo/static/{name}", self._static, methods=["GET"]),
            Route("/demo/state", self._state, methods=["GET"]),
            Route("/demo/downloads", self._add, methods=["POST"]),
            Route("/demo/downloads/{download_id}/{action}", self._action, methods=["POST"]),
        ]

    # -- lifetime -------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Demo:
        await self._restore()
        if not self.downloads:
            for name, size_mb in self._random.sample(CATALOG, 4):
                self._new_download(name, size_mb * _MB)
        loop = asyncio.get_running_loop()
        self._next_news = loop.time() + 8
        self._task = asyncio.create_task(self._run(), name="ssehub-demo")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # wait() does not raise the task's CancelledError, so a cancellation of *this* coroutine still shows.
            await asyncio.wait([task])

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        failing = False
        while True:
            await asyncio.sleep(self.tick)
            now = loop.time()
            try:
                await self._step(now - last, now)
                failing = False
            except HubNotRunningError:
                # Shutting down: the server ended the streams before the lifespan stops us. Not worth a warning.
                logger.debug("demo: the hub is stopping; step not published")
            except BrokerUnavailableError as exc:
                # The broker is down: keep the state, publish again when it is back.
                if not failing:
                    logger.warning("demo: cannot publish (%s); retrying every tick", exc)
                failing = True
            last = now

    # -- publishing -----------------------------------------------------------------------------------------

    async def _emit(self, channel: str, event: str, build: Callable[[], dict[str, Any]]) -> int:
        """Publish one event with the next ``seq``. The data is built under the lock, so an event always shows
        the state at its place in the sequence; ``seq`` counts only events the broker stored."""
        async with self._lock:
            seq = self.seq + 1
            await self.hub.publish(channel, event, {"seq": seq, **build()})
            self.seq = seq
            return seq

    async def _progress(self, download: Download) -> None:
        await self._emit(DOWNLOADS, "download_progress", download.state)

    async def _queue(self) -> None:
        self._last_queue_update = asyncio.get_running_loop().time()
        await self._emit(QUEUE, "queue_update", self.snapshot)

    async def _notify(self, message: str, level: str = "info") -> None:
        data = {"message": message, "level": level, "time": round(time.time(), 3)}
        seq = await self._emit(SYSTEM, "system_notification", lambda: data)
        self.notifications.append({"seq": seq, **data})

    def snapshot(self) -> dict[str, Any]:
        """The whole queue: every download's state and the counts the dashboard shows."""
        states = [download.state() for download in self.downloads.values()]
        count = {status: sum(1 for s in states if s["status"] == status) for status in ("queued", "paused")}
        return {
            "downloads": states,
            "active": sum(1 for s in states if s["status"] == "downloading"),
            "queued": count["queued"],
            "paused": count["paused"],
            "completed": sum(1 for s in states if s["status"] == "completed"),
            "total_speed": sum(s["speed"] for s in states),
        }

    # -- simulation -----------------------------------------------------------------------------------------

    def _new_download(self, name: str, size: int) -> Download:
        download = Download(f"dl-{self._next_number}", name, size)
        download.target_speed = self._random.uniform(1.5, 12.0) * _MB
        self._next_number += 1
        self.downloads[download.id] = download
        return download

    def _start_queued(self) -> bool:
        """Move queued downloads into free slots; whether anything started."""
        active = sum(1 for d in self.downloads.values() if d.status == "downloading")
        started = False
        for download in self.downloads.values():
            if active >= self.max_active:
                break
            if download.status == "queued":
                download.status = "downloading"
                download.speed = download.target_speed * 0.3
                active += 1
                started = True
        return started

    def _prune(self) -> bool:
        finished = [d for d in self.downloads.values() if d.status not in _UNFINISHED]
        extra = finished[: max(0, len(finished) - self.keep_finished)]
        for download in extra:
            del self.downloads[download.id]
        return bool(extra)

    async def _step(self, elapsed: float, now: float) -> None:
        changed = self._start_queued()
        finished: list[Download] = []
        for download in list(self.downloads.values()):
            if download.status != "downloading":
                continue
            # Speeds drift around a target per download, as real transfers do.
            download.target_speed = min(
                14 * _MB, max(0.8 * _MB, download.target_speed * self._random.uniform(0.9, 1.1))
            )
            download.speed += (download.target_speed - download.speed) * 0.35
            download.downloaded = min(float(download.size), download.downloaded + download.speed * elapsed)
            if download.downloaded >= download.size:
                download.status = "completed"
                finished.append(download)
                changed = True
            await self._progress(download)
        for download in finished:
            await self._notify(f"Finished {download.name} ({_size_text(download.size)})", "success")
        unfinished = sum(1 for d in self.downloads.values() if d.status in _UNFINISHED)
        if unfinished < 3 and now - self._last_add > 6:
            present = {d.name for d in self.downloads.values()}
            choices = [item for item in CATALOG if item[0] not in present] or list(CATALOG)
            name, size_mb = self._random.choice(choices)
            self._new_download(name, size_mb * _MB)
            self._last_add = now
            changed = True
        changed = self._start_queued() or changed
        changed = self._prune() or changed
        if changed or now - self._last_queue_update >= self.queue_interval:
            await self._queue()
        if now >= self._next_news:
            self._next_news = now + self._random.uniform(15, 35)
            level, message = self._random.choice(_NEWS)
            await self._notify(message, level)

    async def add(self, name: str, size: int) -> Download:
        """Queue a new download and publish it. Raises DemoError when the queue is full."""
        if sum(1 for d in self.downloads.values() if d.status in _UNFINISHED) >= self.max_unfinished:
            raise DemoError(429, "QUEUE_FULL", f"at most {self.max_unfinished} unfinished downloads")
        download = self._new_download(name, size)
        self._start_queued()
        self._prune()
        await self._progress(download)
        await self._queue()
        await self._notify(f"Added {name} ({_size_text(size)})")
        return download

    async def act(self, download_id: str, action: str) -> Download:
        """``pause``, ``resume`` or ``cancel`` a download and publish the change.

        Raises:
            DemoError: unknown action (404), unknown download (404), or not possible in its state (409).
        """
        allowed: dict[str, tuple[tuple[str, ...], Status]] = {
            "pause": (("queued", "downloading"), "paused"),
            "resume": (("paused",), "queued"),
            "cancel": (_UNFINISHED, "cancelled"),
        }
        if action not in allowed:
            raise DemoError(404, "NOT_FOUND", f"unknown action {action[:40]!r}: use pause, resume or cancel")
        download = self.downloads.get(download_id)
        if download is None:
            raise DemoError(404, "UNKNOWN_DOWNLOAD", f"no download {download_id[:40]!r}")
        sources, target = allowed[action]
        if download.status not in sources:
            raise DemoError(409, "INVALID_STATE", f"cannot {action} a download that is {download.status}")
        download.status = target
        download.speed = 0.0
        self._start_queued()
        await self._progress(download)
        await self._queue()
        past = {"pause": "Paused", "resume": "Resumed", "cancel": "Cancelled"}[action]
        await self._notify(f"{past} {download.name}", "warning" if action == "cancel" else "info")
        return download

    # -- restore from history -------------------------------------------------------------------------------

    async def _restore(self) -> None:
        """Continue where a previous demo on this broker stopped: its ``seq`` and queue, read from history.

        The last events before a stop sit just below the broker's head, however long the stop lasted: each
        channel is read back from the head in widening windows until one holds events (a window reaching
        past what the channel retains is refused as expired: then there is nothing older to find). The newest
        ``queue_update`` gives the queue, later progress events the latest states. With the memory broker a
        new process starts empty: nothing to restore.
        """
        broker = self.hub.broker
        try:
            head = await broker.head()
            events: list[Event] = []
            for channel in CHANNELS:
                events.extend(await self._recent_events(channel, head))
        except BrokerUnavailableError as exc:
            logger.warning("demo: could not read history to restore (%s); starting afresh", exc)
            return
        ours = sorted((e for e in events if type(e.fields.get("seq")) is int), key=lambda e: e.id)
        if ours:
            self._apply_history(ours)

    async def _recent_events(self, channel: str, head: EventId) -> list[Event]:
        """The channel's events in the narrowest window below the head that holds any.

        Windows widen from 2 s; one reaching past what the channel retains (or past its creation) is refused
        as expired, and the answer then lies between the last two windows: bisect (bounded reads)."""
        low, high = 0.0, None  # seconds: `low` is known to hold no events, `high` to be expired
        window = 2.0
        for _attempt in range(60):
            found, expired = await self._read_window(channel, head, window)
            if found:
                return found
            if expired:
                high = window
            else:
                low = window
            if high is None:
                if window >= self.hub.settings.history_ttl:
                    return []
                window = min(window * 4, self.hub.settings.history_ttl)
            elif high - low < 0.01:
                return []
            else:
                window = (low + high) / 2
        return []

    async def _read_window(self, channel: str, head: EventId, window: float) -> tuple[list[Event], bool]:
        after = EventId(max(0, head.ms - int(window * 1000)), 0)
        found: list[Event] = []
        for _page in range(100):  # bounded, as history is
            page = await self.hub.broker.read_since([channel], after, limit=500)
            if page.expired:
                return found, True
            found.extend(page.events)
            if len(page.events) < 500:
                break
            after = page.events[-1].id
        return found, False

    def _apply_history(self, events: list[Event]) -> None:
        self.seq = max(int(e.fields["seq"]) for e in events)
        queues = [e for e in events if e.event == "queue_update" and isinstance(e.fields.get("downloads"), list)]
        start = queues[-1].id if queues else EventId(0, 0)
        states = list(queues[-1].fields["downloads"]) if queues else []
        states += [e.fields for e in events if e.event == "download_progress" and e.id > start]
        for state in states:
            try:
                download = Download(
                    str(state["download_id"]),
                    str(state["name"]),
                    int(state["size"]),
                    float(state["downloaded"]),
                    state["status"] if state["status"] in _STATUSES else "paused",
                )
            except (KeyError, TypeError, ValueError):
                continue  # not one of ours after all
            download.target_speed = self._random.uniform(1.5, 12.0) * _MB
            download.speed = download.target_speed * 0.3 if download.status == "downloading" else 0.0
            self.downloads[download.id] = download
            number = download.id.removeprefix("dl-")
            if number.isdigit():
                self._next_number = max(self._next_number, int(number) + 1)
        logger.info("demo: restored seq %d and %d downloads from history", self.seq, len(self.downloads))

    # -- HTTP -----------------------------------------------------------------------------------------------

    def _asset(self, name: str) -> bytes:
        data = self._assets.get(name)
        if data is None:
            data = self._assets[name] = (importlib.resources.files("ssehub") / "static" / "demo" / name).read_bytes()
        return data

    async def _page(self, request: Request) -> Response:
        page = self._asset("index.html").decode("utf-8")
        # The page imports ssehub.js from the API's prefix, wherever it is mounted.
        page = page.replace("{{prefix}}", html.escape(self.hub.settings.prefix, quote=True))
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    async def _static(self, request: Request) -> Response:
        name = request.path_params["name"]
        media_type = _STATIC.get(name)
        if media_type is None:
            return _error(404, "NOT_FOUND", "no such file")
        return Response(self._asset(name), media_type=media_type, headers={"Cache-Control": "no-cache"})

    async def _state(self, request: Request) -> Response:
        # Read without awaiting: the snapshot and seq belong together. Events after it have a greater seq.
        return JSONResponse({"seq": self.seq, **self.snapshot(), "notifications": list(self.notifications)})

    async def _add(self, request: Request) -> Response:
        try:
            body = await _json_body(request, self.hub)
            if not isinstance(body, dict) or not body.keys() <= {"name", "size_mb"} or "name" not in body:
                raise DemoError(422, "INVALID_BODY", 'the body must be {"name": "...", "size_mb": <number, optional>}')
            name, size_mb = body["name"], body.get("size_mb", self._random.choice((48, 146, 356, 631, 1450)))
            if not isinstance(name, str) or not 1 <= len(name.strip()) <= 100 or not name.isprintable():
                raise DemoError(422, "INVALID_NAME", "name must be 1-100 printable characters")
            if isinstance(size_mb, bool) or not isinstance(size_mb, int | float) or not 1 <= size_mb <= 100_000:
                raise DemoError(422, "INVALID_SIZE", "size_mb must be a number from 1 to 100000")
            download = await self.add(name.strip(), int(size_mb * _MB))
        except DemoError as exc:
            return _error(exc.status, exc.code, str(exc))
        except (BrokerUnavailableError, HubNotRunningError) as exc:
            return _error(503, "BROKER_UNAVAILABLE", f"{exc}; the change is published when it is back", retry=2)
        return JSONResponse(download.state(), status_code=201)

    async def _action(self, request: Request) -> Response:
        try:
            download = await self.act(request.path_params["download_id"], request.path_params["action"])
        except DemoError as exc:
            return _error(exc.status, exc.code, str(exc))
        except (BrokerUnavailableError, HubNotRunningError) as exc:
            return _error(503, "BROKER_UNAVAILABLE", f"{exc}; the change is published when it is back", retry=2)
        return JSONResponse(download.state())


def _error(status: int, code: str, message: str, retry: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry)} if retry is not None else None
    return JSONResponse({"error": message, "code": code}, status_code=status, headers=headers)


async def _json_body(request: Request, hub: Hub) -> Any:
    settings = hub.settings
    try:
        # The hub's body rules: bounded size and time (a slow client cannot hold the request open).
        body = await read_body(
            request.scope,
            request.receive,
            limit=_MAX_BODY,
            timeout=settings.body_timeout,
            drain=settings.max_drain_bytes,
        )
    except LimitExceededError as exc:
        raise DemoError(exc.status, exc.code, str(exc)) from exc
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise DemoError(422, "INVALID_JSON", f"the body is not valid JSON: {exc}") from exc


def _size_text(size: int) -> str:
    return f"{size / 1024**3:.1f} GB" if size >= 1024**3 else f"{size / _MB:.0f} MB"
