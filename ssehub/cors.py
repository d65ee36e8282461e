"""CORS: which other origins' pages may read ssehub's answers, with credentials.

The rule (``SSEHUB_ALLOWED_ORIGINS``): an allow-list of exact origins. An allowed origin gets its own value
echoed in ``Access-Control-Allow-Origin`` with ``Access-Control-Allow-Credentials: true`` (never ``*``: a
browser refuses ``*`` on a credentialed request, and a wildcard would hand every site the user's cookies).
Any other origin gets no CORS headers, so its page cannot read the answer. When the list is empty, ssehub
sends no CORS headers at all and every answer is the same whatever the ``Origin``.

Where it is applied: the stream endpoint adds :meth:`CorsPolicy.headers` to its response start itself (the fast
stream path writes straight to the server's transport, and wrapping ``send`` would turn that path off); the
API's dispatch answers preflights (:meth:`CorsPolicy.preflight`) and wraps ``send`` of every other route
(:meth:`CorsPolicy.wrap`), errors included, so a page can read a JSON error too. The headers are computed
once per request, never per delivered event.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.responses import JSONResponse, Response

from ssehub._types import Message, Scope, Send

#: Request headers a cross-origin page may send (``EventSource`` sends ``Last-Event-ID`` on reconnects; fetch
#: based clients send credentials and JSON). Compared case-insensitively, as header names are.
ALLOWED_HEADERS = ("Last-Event-ID", "Authorization", "X-API-Key", "Content-Type", "Cache-Control")
#: Methods of the API.
ALLOWED_METHODS = ("GET", "POST", "HEAD")
#: Response headers a page's script may read besides the CORS-safelisted ones (when to retry, how to log in).
EXPOSED_HEADERS = ("Retry-After", "WWW-Authenticate")
#: How long a browser may cache a preflight answer, seconds.
PREFLIGHT_MAX_AGE = 600

_ALLOWED_HEADER_SET = frozenset(name.lower() for name in ALLOWED_HEADERS)
_VARY_ORIGIN = (b"vary", b"Origin")
_EXPOSE = (b"access-control-expose-headers", ", ".join(EXPOSED_HEADERS).encode())
_CREDENTIALS = (b"access-control-allow-credentials", b"true")
_PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


def _header(scope: Scope, name: bytes) -> bytes | None:
    """The value of a request header that must appear once; ``None`` if absent or repeated."""
    found: bytes | None = None
    for key, value in scope.get("headers", ()):
        if key == name:
            if found is not None:
                return None  # two Origin headers: no single origin to trust
            found = value
    return found


class CorsPolicy:
    """The CORS answer for each request, from an allow-list of exact origins.

    Args:
        allowed_origins: exact origins (``https://app.example.com``); empty turns CORS off.
    """

    __slots__ = ("_allowed", "_preflight_headers")

    def __init__(self, allowed_origins: Iterable[str]) -> None:
        self._allowed = frozenset(origin.encode("latin-1") for origin in allowed_origins)
        self._preflight_headers = {
            "Access-Control-Allow-Methods": ", ".join(ALLOWED_METHODS),
            "Access-Control-Allow-Headers": ", ".join(ALLOWED_HEADERS),
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE),
            "Access-Control-Allow-Credentials": "true",
            "Vary": _PREFLIGHT_VARY,
        }

    @property
    def enabled(self) -> bool:
        """Whether any origin is allowed (otherwise no CORS header is ever sent)."""
        return bool(self._allowed)

    def headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        """The CORS response headers for this request: empty when CORS is off.

        When CORS is on, every answer depends on the request's ``Origin`` and says so with ``Vary: Origin``
        (a shared cache must not hand one origin's answer to another).
        """
        if not self._allowed:
            return []
        origin = _header(scope, b"origin")
        if origin is None or origin not in self._allowed:
            return [_VARY_ORIGIN]
        return [(b"access-control-allow-origin", origin), _CREDENTIALS, _EXPOSE, _VARY_ORIGIN]

    @staticmethod
    def is_preflight(scope: Scope) -> bool:
        """Whether the request is a CORS preflight (``OPTIONS`` with ``Access-Control-Request-Method``)."""
        return scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method") is not None

    def preflight(self, scope: Scope) -> Response:
        """The answer to a preflight: 204 with the allowed methods and headers, or 403 with a JSON error."""
        vary = {"Vary": _PREFLIGHT_VARY}
        if not self._allowed:
            return _refusal("CORS_DISABLED", "cross-origin requests are not enabled (SSEHUB_ALLOWED_ORIGINS)", {})
        origin = _header(scope, b"origin")
        if origin is None or origin not in self._allowed:
            shown = origin.decode("latin-1")[:100] if origin is not None else "(none)"
            return _refusal("CORS_ORIGIN_NOT_ALLOWED", f"origin {shown!r} is not in SSEHUB_ALLOWED_ORIGINS", vary)
        method = (_header(scope, b"access-control-request-method") or b"").decode("latin-1")
        if method not in ALLOWED_METHODS:
            return _refusal("CORS_METHOD_NOT_ALLOWED", f"method {method[:20]!r} is not allowed", vary)
        requested = (_header(scope, b"access-control-request-headers") or b"").decode("latin-1")
        refused = sorted({h.strip().lower() for h in requested.split(",") if h.strip()} - _ALLOWED_HEADER_SET)
        if refused:
            listed = ", ".join(name[:40] for name in refused[:5])
            return _refusal(
                "CORS_HEADERS_NOT_ALLOWED",
                f"request headers not allowed: {listed}; allowed: {', '.join(ALLOWED_HEADERS)}",
                vary,
            )
        response = Response(status_code=204, headers=self._preflight_headers)
        response.raw_headers.append((b"access-control-allow-origin", origin))
        return response

    def wrap(self, scope: Scope, send: Send) -> Send:
        """``send`` with this request's CORS headers added to the response start (``send`` itself when none).

        Only for answers other than streams: a wrapped ``send`` turns the fast stream path off.
        """
        extra = self.headers(scope)
        if not extra:
            return send

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": merge_headers(message.get("headers", ()), extra)}
            await send(message)

        return send_with_cors


def merge_headers(
    headers: Iterable[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """``headers`` plus ``extra``; a ``Vary`` already present gets ``Origin`` appended rather than repeated."""
    merged = list(headers)
    for name, value in extra:
        if name == b"vary":
            for i, (key, existing) in enumerate(merged):
                if key.lower() == b"vary":
                    if b"origin" not in existing.lower():
                        merged[i] = (key, existing + b", " + value)
                    break
            else:
                merged.append((name, value))
        else:
            merged.append((name, value))
    return merged


def _refusal(code: str, message: str, headers: dict[str, str]) -> JSONResponse:
    # The shape of app.error_response, built here so that this module does not import the app.
    return JSONResponse({"error": message, "code": code}, status_code=403, headers=headers)
