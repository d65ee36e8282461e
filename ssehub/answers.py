"""ssehub's HTTP answers to refusals: one JSON shape ``{"error": ..., "code": ...}``, and which hub error becomes
which status (401, 403, 404, 413, 422, 429, 503), for every endpoint."""

from __future__ import annotations

from starlette.responses import JSONResponse

from ssehub.exceptions import (
    AuthenticationError,
    AuthUnavailableError,
    BrokerUnavailableError,
    ChannelLimitError,
    ConnectionLimitError,
    HubNotRunningError,
    InvalidValueError,
    LimitExceededError,
    PermissionDeniedError,
    UnknownChannelError,
)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one shape of every error ssehub answers."""
    return JSONResponse({"error": message, "code": code}, status_code=status, headers=headers)


def error_for(exc: Exception) -> JSONResponse:
    """Translate a hub error into its HTTP answer."""
    if isinstance(exc, UnknownChannelError):
        return error_response(404, "UNKNOWN_CHANNEL", str(exc))
    if isinstance(exc, InvalidValueError):
        return error_response(413 if exc.code == "PAYLOAD_TOO_LARGE" else 422, exc.code, str(exc))
    if isinstance(exc, ConnectionLimitError):
        return error_response(503, "MAX_CONNECTIONS", str(exc), {"Retry-After": "5"})
    if isinstance(exc, BrokerUnavailableError):
        return error_response(503, "BROKER_UNAVAILABLE", str(exc), {"Retry-After": "2"})
    if isinstance(exc, HubNotRunningError):
        return error_response(503, "HUB_NOT_RUNNING", str(exc), {"Retry-After": "2"})
    if isinstance(exc, ChannelLimitError):
        return error_response(429, "CHANNEL_LIMIT", str(exc), {"Retry-After": "60"})
    if isinstance(exc, AuthenticationError):
        return error_response(401, exc.code, str(exc), {"WWW-Authenticate": _www_authenticate(exc)})
    if isinstance(exc, PermissionDeniedError):
        return error_response(403, "FORBIDDEN", str(exc))
    if isinstance(exc, AuthUnavailableError):
        return error_response(503, "AUTH_UNAVAILABLE", str(exc), {"Retry-After": "5"})
    if isinstance(exc, LimitExceededError):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
        if exc.close:
            headers["Connection"] = "close"  # the body was left unread: do not parse it as the next request
        return error_response(exc.status, exc.code, str(exc), headers)
    raise exc


def _www_authenticate(exc: AuthenticationError) -> str:
    """RFC 6750: a bare challenge when credentials are missing, ``invalid_token`` when they were refused."""
    if exc.code == "UNAUTHORIZED":
        return 'Bearer realm="ssehub"'
    text = str(exc).encode("ascii", "replace").decode("ascii")
    description = "".join(ch for ch in text if ch.isprintable() and ch not in '"\\')
    return f'Bearer realm="ssehub", error="invalid_token", error_description="{description}"'


HUB_ERRORS = (
    InvalidValueError,
    ConnectionLimitError,
    BrokerUnavailableError,
    HubNotRunningError,
    ChannelLimitError,
    AuthenticationError,
    PermissionDeniedError,
    AuthUnavailableError,
    LimitExceededError,
)
