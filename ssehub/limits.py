"""Per-client limits of the HTTP API: open streams, publish rate, request bodies.

Each limit runs once per request (never per delivered event) and refuses with
:class:`~ssehub.exceptions.LimitExceededError`, which the API answers as a JSON error before any stream starts:

- :class:`StreamLimits`: open streams per client address (``SSEHUB_MAX_STREAMS_PER_CLIENT``) and per
  identity (``SSEHUB_MAX_STREAMS_PER_IDENTITY``), 429 ``TOO_MANY_STREAMS``. A stream holds a
  :class:`StreamLease` and releases it in the ``finally`` of its endpoint.
- :class:`RateLimiter`: a token bucket per key (an API key or subject, else the client address) for
  ``POST /publish`` (``SSEHUB_PUBLISH_RATE``, ``SSEHUB_PUBLISH_BURST``), 429 ``RATE_LIMITED``.
- :func:`read_body` and :func:`discard_body`: a publish body read within ``SSEHUB_BODY_TIMEOUT`` (408) and
  ``SSEHUB_MAX_PAYLOAD_BYTES`` (413). A refused body is read and thrown away up to
  ``SSEHUB_MAX_DRAIN_BYTES``, so that a client which sends its whole body before reading gets the answer
  rather than a connection reset (closing a socket with unread input makes the kernel send RST, and a reset
  can destroy the answer before the client reads it).

The client address is the server's ``scope["client"]``: behind a trusted proxy the server has already taken it
from ``X-Forwarded-For`` (``ssehub serve`` configures uvicorn from ``SSEHUB_TRUSTED_PROXIES``, see
:func:`ssehub.guard.uvicorn_options`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ssehub._types import Message, Receive, Scope
from ssehub._uvicorn import receive_ready
from ssehub.exceptions import LimitExceededError

if TYPE_CHECKING:
    from ssehub.grants import Grant
    from ssehub.settings import Settings

#: Seconds a client refused for too many streams is told to wait (a stream slot frees when one of its ends).
STREAMS_RETRY_AFTER = 10
#: Token buckets kept at most; past it the least recently used is forgotten (it starts full again).
MAX_RATE_KEYS = 100_000


def client_address(scope: Scope) -> str | None:
    """The client's address as the server reports it (after trusted-proxy handling); ``None`` when the server
    does not know it (a Unix socket): per-address limits then do not apply, rather than lumping every client
    into one count."""
    client = scope.get("client")
    if client and client[0]:
        return str(client[0])
    return None


def identity_of(grant: Grant) -> str | None:
    """The identity a request's per-identity limits count against: the API key (by its name) or the token's
    subject; ``None`` for anonymous and open access, and for a token without a subject (then the address counts,
    rather than every such token sharing one count)."""
    if grant.kind == "api_key":
        return "key:" + grant.name
    if grant.kind == "jwt" and grant.subject:
        return "sub:" + grant.subject
    return None


def rate_key(scope: Scope, identity: str | None) -> str | None:
    """The publish rate limiter's key: the identity when the request has one, else the client address
    (``None``: neither is known, nothing to count against).

    Prefixed so that an identity can never share a bucket with an address spelled the same.
    """
    if identity is not None:
        return "id:" + identity
    address = client_address(scope)
    return None if address is None else "addr:" + address


class StreamLease:
    """One open stream's share of the per-client and per-identity counts. :meth:`release` is idempotent."""

    __slots__ = ("_limits", "client", "identity")

    def __init__(self, limits: StreamLimits, client: str | None, identity: str | None) -> None:
        self._limits: StreamLimits | None = limits
        self.client = client
        self.identity = identity

    def release(self) -> None:
        """Give the stream's counts back (call it in ``finally`` when the stream ends)."""
        limits, self._limits = self._limits, None
        if limits is not None:
            limits._release(self.client, self.identity)


class StreamLimits:
    """Counts open streams per client address and per identity.

    Args:
        per_client: streams one client address may hold open (0: no limit).
        per_identity: streams one identity (an API key or token subject) may hold open (0: no limit).

    The counts live in dicts whose entries go when they fall to zero, so memory follows the open streams.
    """

    __slots__ = ("_by_client", "_by_identity", "per_client", "per_identity")

    def __init__(self, per_client: int, per_identity: int) -> None:
        self.per_client = per_client
        self.per_identity = per_identity
        self._by_client: dict[str, int] = {}
        self._by_identity: dict[str, int] = {}

    def acquire(self, client: str | None, identity: str | None = None) -> StreamLease:
        """Count one more stream for ``client`` (when the address is known) and ``identity`` (when the request
        has one).

        Raises:
            LimitExceededError: 429 ``TOO_MANY_STREAMS``; nothing was counted.
        """
        if client is not None and self.per_client and self._by_client.get(client, 0) >= self.per_client:
            raise LimitExceededError(
                f"this client address already has {self.per_client} open streams (SSEHUB_MAX_STREAMS_PER_CLIENT)",
                "TOO_MANY_STREAMS",
                429,
                retry_after=STREAMS_RETRY_AFTER,
            )
        if identity is not None and self.per_identity and self._by_identity.get(identity, 0) >= self.per_identity:
            raise LimitExceededError(
                f"this identity already has {self.per_identity} open streams (SSEHUB_MAX_STREAMS_PER_IDENTITY)",
                "TOO_MANY_STREAMS",
                429,
                retry_after=STREAMS_RETRY_AFTER,
            )
        if client is not None:
            self._by_client[client] = self._by_client.get(client, 0) + 1
        if identity is not None:
            self._by_identity[identity] = self._by_identity.get(identity, 0) + 1
        return StreamLease(self, client, identity)

    def _release(self, client: str | None, identity: str | None) -> None:
        if client is not None:
            _decrement(self._by_client, client)
        if identity is not None:
            _decrement(self._by_identity, identity)

    def open_streams(self, client: str | None = None, identity: str | None = None) -> int:
        """Streams counted for a client address or an identity (for tests and introspection)."""
        if identity is not None:
            return self._by_identity.get(identity, 0)
        return self._by_client.get(client or "", 0)

    @property
    def tracked(self) -> int:
        """Client addresses and identities with at least one open stream."""
        return len(self._by_client) + len(self._by_identity)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class RateLimiter:
    """A token bucket per key: ``burst`` requests at once, refilled at ``rate`` per second.

    Args:
        rate: tokens per second (0: no limit).
        burst: the bucket's size.
        max_keys: buckets kept at most (least recently used forgotten first), so that a flood of distinct
            addresses cannot grow memory.
        clock: seconds, monotonic (tests pass their own).
    """

    __slots__ = ("_buckets", "_clock", "burst", "max_keys", "rate")

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int = MAX_RATE_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        # key -> (tokens, time of the last refill); dict order is least recently used first.
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, key: str | None) -> None:
        """Take one token from ``key``'s bucket (``None``: nothing to count against, always allowed).

        Raises:
            LimitExceededError: 429 ``RATE_LIMITED`` with the seconds until a token is back; nothing was taken.
        """
        if not self.rate or key is None:
            return
        now = self._clock()
        tokens, last = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait = max(1, math.ceil((1.0 - tokens) / self.rate))
            raise LimitExceededError(
                f"more than {self.rate:g} publish requests per second (SSEHUB_PUBLISH_RATE)",
                "RATE_LIMITED",
                429,
                retry_after=wait,
            )
        self._buckets[key] = (tokens - 1.0, now)
        while len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)


async def discard_body(receive: Receive, max_bytes: int, timeout: float) -> bool:
    """Read the request body and throw it away, up to ``max_bytes`` and ``timeout`` seconds.

    Returns:
        Whether the body was read to its end (then the connection may stay open); otherwise the answer must
        close it.
    """
    seen = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return False  # the client went away
                seen += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return True
                if seen > max_bytes:
                    return False
    except TimeoutError:
        return False


async def drain_before_refusal(scope: Scope, receive: Receive, settings: Settings) -> bool:
    """Before refusing a request whose body was not read (401, 403, 429): read and drop the body, within
    ``max_drain_bytes`` and ``body_timeout``, so that the client reads the refusal rather than a reset.

    Returns:
        Whether the body was read to its end; otherwise the refusal must close the connection. A client that
        waits for ``100 Continue`` or announces a body over the bound is not read from at all.
    """
    for name, value in scope.get("headers", ()):
        if name == b"expect" and value.lower() == b"100-continue":
            return False
        if name == b"content-length" and value.isdigit() and int(value) > settings.max_drain_bytes:
            return False
    return await discard_body(receive, settings.max_drain_bytes, settings.body_timeout)


def _too_large(limit: int, close: bool) -> LimitExceededError:
    return LimitExceededError(
        f"the body is larger than {limit} bytes (SSEHUB_MAX_PAYLOAD_BYTES)", "PAYLOAD_TOO_LARGE", 413, close=close
    )


async def read_body(scope: Scope, receive: Receive, *, limit: int, timeout: float, drain: int) -> bytes:
    """Read a request body of at most ``limit`` bytes within ``timeout`` seconds.

    A declared ``Content-Length`` over the limit is refused before reading; the body is then discarded up to
    ``drain`` bytes (not when the client waits for ``100 Continue``: it has sent nothing).

    Raises:
        LimitExceededError: 413 ``PAYLOAD_TOO_LARGE`` or 408 ``REQUEST_TIMEOUT`` (400 ``CLIENT_GONE`` if the
            client went away); ``close`` says whether the body was left unread.
    """
    declared: int | None = None
    expects_continue = False
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and value.isdigit():
            declared = int(value)
        elif name == b"expect" and value.lower() == b"100-continue":
            expects_continue = True
    if declared is not None and declared > limit:
        if expects_continue or declared > drain:
            raise _too_large(limit, close=True)
        raise _too_large(limit, close=not await discard_body(receive, drain, timeout))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    body = bytearray()
    more = True
    if receive_ready(receive):
        # The body (or its first part) is here already: awaiting it cannot stall, so no timer for it.
        more = _append_body(await receive(), body, limit)
    if more and len(body) <= limit:
        try:
            async with asyncio.timeout_at(deadline):
                while more and len(body) <= limit:
                    more = _append_body(await receive(), body, limit)
        except TimeoutError:
            raise LimitExceededError(
                f"the body did not arrive within {timeout:g} seconds (SSEHUB_BODY_TIMEOUT)",
                "REQUEST_TIMEOUT",
                408,
                close=True,
            ) from None
    if len(body) <= limit:
        return bytes(body)
    # Over the limit with more to come: throw the rest away (within the bound and the time left) before answering.
    seen = len(body)
    del body
    drained = seen <= drain and await discard_body(receive, drain - seen, max(0.0, deadline - loop.time()))
    raise _too_large(limit, close=not drained)


def _append_body(message: Message, body: bytearray, limit: int) -> bool:
    """Add a request message's bytes to ``body``; return whether more is to come.

    Raises:
        LimitExceededError: 400 ``CLIENT_GONE`` (not a request message), or 413 when the body ended over ``limit``.
    """
    if message["type"] != "http.request":
        raise LimitExceededError("the client went away while sending the body", "CLIENT_GONE", 400, close=True)
    body += message.get("body", b"")
    more: bool = message.get("more_body", False)
    if len(body) > limit and not more:
        raise _too_large(limit, close=False)
    return more
