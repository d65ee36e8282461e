"""A Python client for ssehub streams: ``async for event in subscribe(url, channels=[...])``.

It does what a browser's ``EventSource`` does and what it does not:

- parses the stream with :class:`ssehub.parser.SSEParser` (the same spec-following parser the tests use);
- reconnects after a dropped or ended stream, resuming from the last id it received (``Last-Event-ID``), so
  nothing is missed and nothing arrives twice;
- waits between attempts with exponential backoff and jitter, starting from the server's ``retry:`` time;
- retries refusals that pass (429, 500, 502, 503, 504), honouring ``Retry-After``; fails at once with
  :class:`SubscribeError` on those that do not (401, 403, 404, 422 and every other 4xx, a non-SSE answer);
- treats silence longer than about twice the announced heartbeat interval as a dead stream and replaces it;
- hands ``reset`` to the caller as an ordinary event: history no longer reaches back to the last id, so
  events were lost and the application must reload its state.

Needs ``httpx``: ``pip install 'ssehub[client]'`` (a :class:`~ssehub.exceptions.MissingDependencyError` says so).
See ``docs/python-client.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ssehub.exceptions import MissingDependencyError, SSEHubError
from ssehub.parser import SSEMessage, SSEParser

if TYPE_CHECKING:
    import httpx

__all__ = [
    "ClientEvent",
    "ConnectionState",
    "ReconnectLimitError",
    "SubscribeError",
    "Subscriber",
    "subscribe",
]

logger = logging.getLogger("ssehub.client")

State = Literal["connecting", "open", "reconnecting", "closed"]

#: Statuses worth retrying: the hub is full or starting (503), a proxy in between is restarting (502, 504),
#: a rate limit (429), a passing server error (500). Every other non-200 answer is final.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Events the client handles itself and hides unless ``include_control`` is set.
CONTROL_EVENTS = frozenset({"connected", "heartbeat"})
_MAX_ERROR_BODY = 65536


class SubscribeError(SSEHubError):
    """The hub refused the stream for good (401, 403, 404, 422, another 4xx, or an answer that is not SSE).

    Attributes:
        status: the HTTP status.
        code: the ``code`` of ssehub's JSON error body (``UNKNOWN_CHANNEL``, ...), or ``""``.
        error: the ``error`` message of the body, or the start of the body as text.
    """

    def __init__(self, status: int, code: str, error: str, url: str) -> None:
        super().__init__(f"{url} answered {status}{f' {code}' if code else ''}: {error}")
        self.status = status
        self.code = code
        self.error = error


class ReconnectLimitError(SSEHubError):
    """``max_attempts`` consecutive attempts failed; the message names the last failure."""


@dataclass(frozen=True, slots=True)
class ClientEvent:
    """One event as the application sees it.

    Attributes:
        id: the last event id after this event (what the client resumes from); ``""`` if the hub sent none.
        event: the event type (``download_progress``, ``reset``, ...; ``message`` when the hub names none).
        data: the data parsed as JSON, or the text itself when it is not JSON.
        text: the data as received.
        channel: the event's channel when the subscription has exactly one; ``None`` otherwise (an ssehub
            stream does not name each event's channel).
    """

    id: str
    event: str
    data: Any
    text: str
    channel: str | None = None


@dataclass(frozen=True, slots=True)
class ConnectionState:
    """A change of the connection's state, handed to ``on_state``.

    Attributes:
        state: ``connecting`` (first attempt), ``open``, ``reconnecting`` (waiting ``delay`` seconds before
            attempt ``attempt``), ``closed`` (the iteration ended).
        attempt: consecutive attempts so far without an open stream (0 once open).
        delay: seconds until the next attempt (``reconnecting`` only).
        last_event_id: the id the next attempt resumes from.
        error: why the previous stream or attempt failed, if it did.
    """

    state: State
    attempt: int
    delay: float | None
    last_event_id: str | None
    error: str | None = None


def require_httpx() -> None:
    """Raise MissingDependencyError (naming ``ssehub[client]``) when httpx is not installed."""
    try:
        import httpx  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("httpx", "client") from exc


def _parse_data(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header in its delay-seconds form (ssehub sends that form only)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


class Subscriber:
    """A stream of events that survives drops; iterate it with ``async for`` (see :func:`subscribe`).

    Use it as an async context manager to close its connection deterministically when you stop early;
    breaking out of a bare ``async for`` closes it when the iterator is collected.

    Attributes:
        last_event_id: the id the next connection resumes from (``None`` before any).
        state: ``connecting``, ``open``, ``reconnecting`` or ``closed``.
        attempt: consecutive failed attempts (0 while a stream is open).
    """

    def __init__(
        self,
        url: str,
        *,
        channels: Sequence[str] | None = None,
        token: str | None = None,
        last_event_id: str | None = None,
        filters: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        initial_retry_delay: float = 1.0,
        max_retry_delay: float = 30.0,
        max_attempts: int | None = None,
        heartbeat_timeout: float | None = None,
        connect_timeout: float = 10.0,
        include_control: bool = False,
        on_state: Callable[[ConnectionState], None] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        require_httpx()
        import httpx

        if initial_retry_delay < 0 or max_retry_delay <= 0:
            raise ValueError("initial_retry_delay must be >= 0 and max_retry_delay > 0")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None: retry forever)")
        params: dict[str, str] = dict(filters or {})
        if channels:
            params["channels"] = ",".join(channels)
        self.url = httpx.URL(url).copy_merge_params(params)
        self.channels = tuple(channels or ())
        self.last_event_id = last_event_id or None
        self.state: State = "connecting"
        self.attempt = 0
        self._headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache", **(headers or {})}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        self._initial_delay = initial_retry_delay
        self._max_delay = max_retry_delay
        self._max_attempts = max_attempts
        self._heartbeat_timeout = heartbeat_timeout
        self._connect_timeout = connect_timeout
        self._include_control = include_control
        self._on_state = on_state
        self._client = client
        self._owned_client: httpx.AsyncClient | None = None
        self._server_retry: float | None = None  # seconds, from the last `retry:` the hub sent
        self._iterator: AsyncGenerator[ClientEvent, None] | None = None
        self._channel = self.channels[0] if len(self.channels) == 1 else None

    # -- iteration ------------------------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[ClientEvent]:
        # One stream per Subscriber: iterating again (after a break) continues where the last loop stopped.
        if self._iterator is None:
            self._iterator = self._events()
        return self._iterator

    async def __aenter__(self) -> Subscriber:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop iterating and close the connection (and the HTTP client, if this object made it)."""
        iterator = self._iterator
        if iterator is not None:
            await iterator.aclose()
        await self._close_client()
        self._set_state("closed", None, None)

    async def _close_client(self) -> None:
        client, self._owned_client = self._owned_client, None
        if client is not None:
            await client.aclose()

    def _http(self) -> httpx.AsyncClient:
        if self._client is not None:
            return self._client
        if self._owned_client is None:
            import httpx

            # No read timeout here: silence is judged by the heartbeat watchdog, which knows the interval.
            timeout = httpx.Timeout(self._connect_timeout, read=None)
            self._owned_client = httpx.AsyncClient(timeout=timeout)
        return self._owned_client

    def _set_state(self, state: State, delay: float | None, error: str | None) -> None:
        if state == self.state and state != "reconnecting":
            return
        self.state = state
        if self._on_state is not None:
            self._on_state(ConnectionState(state, self.attempt, delay, self.last_event_id, error))

    def _delay(self, retry_after: float | None) -> float:
        """Backoff before attempt ``self.attempt``: the server's ``retry:`` (or the initial delay) doubled per
        failed attempt, capped, with jitter in the upper half so that clients dropped together spread out
        without any of them hammering; a ``Retry-After`` is honoured up to the cap."""
        base = self._server_retry if self._server_retry is not None else self._initial_delay
        cap = min(self._max_delay, base * 2 ** max(0, self.attempt - 1))
        delay = random.uniform(cap / 2, cap)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._max_delay))
        return delay

    async def _events(self) -> AsyncGenerator[ClientEvent, None]:
        import httpx

        try:
            while True:
                error: str | None = None
                retry_after: float | None = None
                try:
                    # aclosing: when the caller stops at a `yield`, the connection's `async with` exits now,
                    # not whenever the inner generator is collected.
                    async with contextlib.aclosing(self._connect_once()) as events:
                        async for event in events:
                            yield event
                    if self.state == "closed":  # 204: the hub says stop
                        return
                    error = "the server ended the stream"
                except _Retry as exc:
                    error, retry_after = str(exc), exc.retry_after
                except TimeoutError:
                    error = "no data within the heartbeat timeout"
                except httpx.TransportError as exc:  # connect, read, protocol errors and their timeouts
                    error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self.attempt += 1
                if self._max_attempts is not None and self.attempt > self._max_attempts:
                    raise ReconnectLimitError(f"{self.attempt - 1} attempts to reach {self.url} failed: {error}")
                delay = self._delay(retry_after)
                logger.info("stream %s: %s; reconnecting in %.2fs (attempt %d)", self.url, error, delay, self.attempt)
                self._set_state("reconnecting", delay, error)
                await asyncio.sleep(delay)
        finally:
            # However the iteration ends (a final refusal, a break, cancellation), its connections go with it.
            await self._close_client()
            self._set_state("closed", None, None)

    async def _connect_once(self) -> AsyncGenerator[ClientEvent, None]:
        """One connection: yield its events until it ends. Raises _Retry, TimeoutError or httpx errors."""
        headers = dict(self._headers)
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        async with self._http().stream("GET", self.url, headers=headers) as response:
            await self._check_response(response)
            if response.status_code == 204:
                self._set_state("closed", None, None)
                return
            self.attempt = 0
            self._set_state("open", None, None)
            parser = SSEParser(keep_comments=False)
            # Until `connected` announces the heartbeat interval, allow a generous first wait.
            watchdog = self._heartbeat_timeout if self._heartbeat_timeout is not None else 60.0
            chunks = response.aiter_bytes()
            while True:
                try:
                    async with asyncio.timeout(watchdog):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                messages = parser.feed(chunk)
                if parser.reconnection_time is not None:
                    self._server_retry = parser.reconnection_time / 1000
                for message in messages:
                    if message.id:
                        self.last_event_id = message.id
                    if message.event == "connected":
                        watchdog = self._watchdog_from(message, watchdog)
                    if message.event in CONTROL_EVENTS and not self._include_control:
                        continue
                    yield ClientEvent(message.id, message.event, _parse_data(message.data), message.data, self._channel)

    def _watchdog_from(self, message: SSEMessage, current: float) -> float:
        if self._heartbeat_timeout is not None:
            return current
        info = _parse_data(message.data)
        interval = info.get("heartbeat_interval") if isinstance(info, dict) else None
        if isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0:
            # Two intervals and some slack: one late heartbeat on a busy server is not a dead stream.
            return 2 * float(interval) + 5.0
        return current

    async def _check_response(self, response: httpx.Response) -> None:
        status = response.status_code
        if status == 200:
            content_type = response.headers.get("content-type", "")
            if content_type.split(";")[0].strip().lower() != "text/event-stream":
                raise SubscribeError(status, "", f"not an event stream (content-type {content_type!r})", str(self.url))
            return
        if status == 204:
            return
        body = b""
        async for part in response.aiter_bytes():
            body += part
            if len(body) > _MAX_ERROR_BODY:
                break
        code, error = _error_of(body)
        if status in RETRY_STATUSES:
            raise _Retry(
                f"{status} {code}: {error}".replace("  ", " "), _retry_after(response.headers.get("retry-after"))
            )
        raise SubscribeError(status, code, error, str(self.url))


class _Retry(Exception):
    """A refusal worth retrying (internal: turned into a reconnect)."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _error_of(body: bytes) -> tuple[str, str]:
    """(code, error) of ssehub's JSON error body, or ("", the start of the body)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return "", body[:200].decode("utf-8", errors="replace").strip() or "(empty body)"
    if isinstance(payload, dict):
        return str(payload.get("code", "")), str(payload.get("error", payload))
    return "", str(payload)[:200]


def subscribe(
    url: str,
    channels: Sequence[str] | None = None,
    token: str | None = None,
    last_event_id: str | None = None,
    **options: Any,
) -> Subscriber:
    """Subscribe to an ssehub stream; iterate the result with ``async for``.

    Example::

        async for event in subscribe("http://127.0.0.1:8000/api/v1/events/stream", channels=["download:updates"]):
            if event.event == "reset":
                reload_everything()      # events were lost: history no longer reaches back
            else:
                handle(event.event, event.data)

    Args:
        url: the stream endpoint (``.../api/v1/events/stream``, ``.../queue``, ``.../downloads/42``).
        channels: channels to subscribe to (``?channels=``); the hub's defaults when omitted.
        token: sent as ``Authorization: Bearer <token>``.
        last_event_id: resume after this id (e.g. one saved by a previous run).
        **options: keyword arguments of :class:`Subscriber`: ``filters``, ``headers``,
            ``initial_retry_delay`` (1.0 s, used until the hub sends ``retry:``), ``max_retry_delay`` (30 s),
            ``max_attempts`` (None: retry forever), ``heartbeat_timeout`` (derived from the hub's heartbeat
            interval), ``connect_timeout``, ``include_control`` (also yield ``connected`` and ``heartbeat``),
            ``on_state`` (called with a :class:`ConnectionState` on every change), ``client`` (an
            ``httpx.AsyncClient`` to use; its read timeout should be off).

    Raises (while iterating):
        SubscribeError: a refusal that retrying cannot fix (401, 403, 404, 422, ...).
        ReconnectLimitError: ``max_attempts`` consecutive attempts failed.
        MissingDependencyError: httpx is not installed (raised at once).
    """
    return Subscriber(url, channels=channels, token=token, last_event_id=last_event_id, **options)
