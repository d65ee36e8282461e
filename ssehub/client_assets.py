"""The browser client's files, package data under ``ssehub/static``, served by the API.

``GET {prefix}/client.js`` is the ES module a page imports (``import { SSEHubClient } from
"/api/v1/events/client.js"``), ``client.d.ts`` its TypeScript declarations, ``client-react.js`` and
``client-react.d.ts`` the optional React hooks. Each file is read once, when the API is built (a packaging mistake
fails at startup, not on a visitor's request), and served with an ETag (a strong hash of the bytes, so a deploy
that changes the file changes it), a short ``Cache-Control`` and ``Access-Control-Allow-Origin: *`` (public code:
a page on another origin may import the module). See docs/client.md.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.routing import Route

from ssehub._types import Receive, Scope, Send

#: Browsers and proxies may reuse a copy this long without asking; after that an If-None-Match costs a 304.
CACHE_CONTROL = "public, max-age=300"

#: Path below the API -> (file in ``ssehub/static``, media type).
CLIENT_FILES: dict[str, tuple[str, str]] = {
    "/client.js": ("ssehub.js", "application/javascript; charset=utf-8"),
    "/client.d.ts": ("ssehub.d.ts", "application/typescript; charset=utf-8"),
    "/client-react.js": ("ssehub-react.js", "application/javascript; charset=utf-8"),
    "/client-react.d.ts": ("ssehub-react.d.ts", "application/typescript; charset=utf-8"),
}


def read_static(filename: str) -> bytes:
    """The bytes of a file in the package's ``static`` folder (also for tests and tools)."""
    return resources.files("ssehub").joinpath("static", filename).read_bytes()


class StaticFile:
    """An ASGI endpoint answering ``GET``/``HEAD`` with one file's bytes, ``304`` when the client's copy is current.

    Args:
        filename: the file in ``ssehub/static``.
        media_type: its ``Content-Type``.
    """

    def __init__(self, filename: str, media_type: str) -> None:
        self.body = read_static(filename)
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'
        self.headers = {
            "etag": self.etag,
            "cache-control": CACHE_CONTROL,
            "access-control-allow-origin": "*",
            "x-content-type-options": "nosniff",
        }
        self.media_type = media_type

    def _matches(self, if_none_match: str) -> bool:
        """Whether an If-None-Match header names this file's current version (weak comparison, RFC 9110)."""
        tags = [tag.strip() for tag in if_none_match.split(",")]
        return any(tag == "*" or tag.removeprefix("W/") == self.etag for tag in tags)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if_none_match = Headers(scope=scope).get("if-none-match")
        if if_none_match is not None and self._matches(if_none_match):
            response = Response(status_code=304, headers=self.headers)
        else:
            response = Response(self.body, media_type=self.media_type, headers=self.headers)
        await response(scope, receive, send)


def client_routes() -> list[Route]:
    """The routes of the client's files, relative to the API's mount point."""
    return [
        Route(path, StaticFile(filename, media_type), methods=["GET", "HEAD"])
        for path, (filename, media_type) in CLIENT_FILES.items()
    ]


__all__ = ["CACHE_CONTROL", "CLIENT_FILES", "StaticFile", "client_routes", "read_static"]
