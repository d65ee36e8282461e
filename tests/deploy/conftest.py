"""Fixtures for the tests through real proxies: a hub upstream, a test CA, nginx and Caddy from deploy/.

One hub (heartbeat every 0.5 s) serves every proxy; each proxy configuration starts once, on its own free
loopback ports, and everything stops (proxies by PID) after the last test of this package. Every proxy here runs
its shipped file with one edit: the upstream read timeout is 2 s instead of 90 s, so that the heartbeat test
shows a quiet stream outliving it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ssehub import Hub, create_app
from ssehub.testing import SSEMessage, free_port, open_stream, running_server
from tests.conftest import make_settings
from tests.deploy.proxies import KINDS, LAYOUTS, Proxy, TLSFiles, make_test_ca, start_caddy, start_nginx
from tests.deploy.upstream import PAGE, with_echo

PREFIX = "/api/v1/events"
#: Heartbeat of the hub behind the proxies, seconds.
HEARTBEAT = 0.5
#: The proxies' upstream read timeout in these tests, seconds (shipped: 90 s).
READ_TIMEOUT = 2
#: The edits that shorten it. Caddy applies its read_timeout to idle pooled upstream connections too (its reads
#: wait for the next response), so its keepalive stays below the read timeout, as in the shipped file (4 s < 90 s).
SHORT_READ_TIMEOUT: dict[str, tuple[tuple[str, str], ...]] = {
    "nginx": (("proxy_read_timeout 90s;", f"proxy_read_timeout {READ_TIMEOUT}s;"),),
    "caddy": (("read_timeout 90s", f"read_timeout {READ_TIMEOUT}s"), ("keepalive 4s", "keepalive 1s")),
}


@dataclass
class Upstream:
    """A hub served by uvicorn on a free port: its base URL, ``host:port`` for the proxy files, the hub."""

    url: str
    address: str
    hub: Hub
    first_chunks: dict[str, threading.Event] = field(default_factory=dict)

    def body_signal(self, name: str) -> threading.Event:
        """An event set when the first part of a body sent to the echo with ``x-echo-signal: name`` arrives."""
        return self.first_chunks.setdefault(name, threading.Event())

    @property
    def api(self) -> str:
        """The API's base URL (direct, not through a proxy)."""
        return self.url + PREFIX


ProxyFactory = Callable[..., Proxy]


@contextlib.contextmanager
def _upstream(heartbeat: float, **settings: Any) -> Iterator[Upstream]:
    hub = Hub(make_settings(heartbeat_interval=heartbeat, retry_ms=500, **settings))
    signals: dict[str, threading.Event] = {}

    def on_first_chunk(name: str) -> None:
        signals.setdefault(name, threading.Event()).set()

    app = with_echo(create_app(hub=hub), PREFIX, PAGE, on_first_chunk)
    # proxy_headers=False: the echo then shows the proxy's own end of the upstream connection and the
    # X-Forwarded-* headers exactly as the proxy sent them.
    with running_server(app, proxy_headers=False) as url:
        yield Upstream(url, url.removeprefix("http://"), hub, signals)


@pytest.fixture(scope="package")
def page_port() -> int:
    """The HTTPS port of :func:`page_host`, chosen first: its origin is configured in the hub."""
    return free_port()


@pytest.fixture(scope="package")
def page_origin(page_port: int) -> str:
    """The origin of the page that streams cross-origin from the API host (allowed by the hub)."""
    return f"https://localhost:{page_port}"


@pytest.fixture(scope="package")
def upstream(page_origin: str) -> Iterator[Upstream]:
    """The hub every proxy forwards to: heartbeats every 0.5 s, ``page_origin`` allowed for CORS."""
    with _upstream(HEARTBEAT, allowed_origins=[page_origin]) as served:
        yield served


@pytest.fixture(scope="package")
def page_host(
    tmp_path_factory: pytest.TempPathFactory, page_port: int, upstream: Upstream, tls_files: TLSFiles, site_root: Path
) -> Iterator[Proxy]:
    """Where the cross-origin page lives: nginx's one-origin file on ``page_port`` (its API is not used)."""
    proxy = start_nginx(
        tmp_path_factory.mktemp("page-host"),
        "same-origin",
        upstream.address,
        tls_files,
        site_root,
        https_port=page_port,
    )
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="package")
def quiet_upstream() -> Iterator[Upstream]:
    """A hub whose heartbeats (every 30 s) are slower than the proxies' read timeout: the negative control."""
    with _upstream(30.0) as served:
        yield served


@pytest.fixture(scope="package")
def brief_upstream() -> Iterator[Upstream]:
    """A hub whose streams end after 1.5 s, so that browsers reconnect (and resume) through the proxies."""
    with _upstream(HEARTBEAT, connection_timeout=1.5) as served:
        yield served


#: The one API key of :func:`secured_upstream` (subscribe and publish on every channel).
API_KEY = "proxy-tests-key-8c1d0f2b9e"


@pytest.fixture(scope="package")
def secured_upstream() -> Iterator[Upstream]:
    """A hub that requires credentials: one API key, no public channel."""
    key = {"key": API_KEY, "scopes": ["subscribe", "publish"], "channels": ["*"], "name": "proxy-tests"}
    with _upstream(HEARTBEAT, api_keys=[key]) as served:
        yield served


@pytest.fixture(scope="package")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A test CA and a certificate for localhost, for nginx (Caddy uses its internal CA)."""
    return make_test_ca(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="package")
def site_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same-origin layout's page: eight EventSources on the API of the same origin."""
    root = tmp_path_factory.mktemp("site")
    (root / "index.html").write_text(PAGE)
    return root


@pytest.fixture(scope="package")
def proxies(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream, tls_files: TLSFiles, site_root: Path
) -> Iterator[ProxyFactory]:
    """Start (once per configuration) a proxy of a kind and layout in front of a hub; all stop at the end.

    ``edits`` are exact line replacements on top of the short read timeout; ``to`` picks another upstream.
    """
    running: dict[tuple[object, ...], Proxy] = {}

    def get(kind: str, layout: str, *, edits: Sequence[tuple[str, str]] = (), to: Upstream | None = None) -> Proxy:
        target = to or upstream
        all_edits = (*SHORT_READ_TIMEOUT[kind], *edits)
        key = (kind, layout, all_edits, target.address)
        if key not in running:
            directory = tmp_path_factory.mktemp(f"{kind}-{layout}")
            if kind == "nginx":
                running[key] = start_nginx(directory, layout, target.address, tls_files, site_root, all_edits)
            else:
                running[key] = start_caddy(directory, layout, target.address, site_root, all_edits)
        return running[key]

    try:
        yield get
    finally:
        for proxy in running.values():
            proxy.stop()


@pytest.fixture(params=[(kind, layout) for kind in KINDS for layout in LAYOUTS], ids=lambda p: f"{p[0]}-{p[1]}")
def proxy(request: pytest.FixtureRequest, proxies: ProxyFactory) -> Proxy:
    """Each proxy in each layout, from its shipped file."""
    kind, layout = request.param
    return proxies(kind, layout)


@pytest.fixture(params=KINDS)
def api_host_proxy(request: pytest.FixtureRequest, proxies: ProxyFactory) -> Proxy:
    """Each proxy in the separate API host layout (the one browsers call cross-origin)."""
    return proxies(request.param, "api-host")


@pytest.fixture(params=KINDS)
def same_origin_proxy(request: pytest.FixtureRequest, proxies: ProxyFactory) -> Proxy:
    """Each proxy in the one-origin layout (page and API behind it)."""
    return proxies(request.param, "same-origin")


def tls_context(proxy: Proxy) -> ssl.SSLContext:
    """A client TLS context trusting only the CA behind ``proxy``'s certificate."""
    return ssl.create_default_context(cafile=str(proxy.ca))


@contextlib.asynccontextmanager
async def proxy_client(proxy: Proxy, *, http2: bool = False) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTPS client for ``proxy`` (HTTP/1.1 unless ``http2``), without connection limits."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=20)
    async with httpx.AsyncClient(verify=tls_context(proxy), http2=http2, timeout=5.0, limits=limits) as client:
        yield client


@pytest.fixture
async def direct() -> AsyncIterator[httpx.AsyncClient]:
    """A plain client for the upstream itself (publishing, the negative controls)."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


async def publish(client: httpx.AsyncClient, api: str, channel: str, data: object, event: str = "note") -> str:
    """Publish through ``api`` (a proxy's or the hub's own); return the event id."""
    response = await client.post(f"{api}/publish", json={"channel": channel, "event": event, "data": data})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@contextlib.asynccontextmanager
async def held_stream(
    proxy: Proxy, upstream: Upstream, direct: httpx.AsyncClient, channel: str, watch: float
) -> AsyncIterator[asyncio.Task[SSEMessage]]:
    """Open a stream through ``proxy`` and publish to it for ``watch`` seconds; assert nothing arrived.

    Yields the task still waiting for the stream's first event (the caller may push it out); cancels it after.
    """
    async with proxy_client(proxy) as client:

        async def first_event() -> SSEMessage:
            url = f"{proxy.https_url}{PREFIX}/stream?channels={channel}"
            async with open_stream(client, url, timeout=30) as stream:
                return await stream.next(timeout=30)

        reader = asyncio.create_task(first_event())
        try:
            started = time.monotonic()
            n = 0
            while time.monotonic() - started < watch:
                # The shipped files deliver each of these within a second.
                await publish(direct, upstream.api, channel, {"n": n})
                n += 1
                await asyncio.sleep(0.3)
            assert not reader.done(), "the buffering proxy delivered the stream: the control shows nothing"
            assert proxy.process.poll() is None, proxy.output()
            yield reader
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
