"""Exceptions raised by ssehub.

Hierarchy (kept shallow on purpose)::

    SSEHubError
    ├── InvalidValueError      a channel, event type, id or filter that breaks a rule
    │   └── UnknownChannelError  a valid name that the configured channel patterns do not allow
    ├── InvalidEventIdError    a Last-Event-ID that is not an ssehub id
    ├── ConnectionLimitError   the hub already serves max_connections streams
    ├── HubNotRunningError     the hub was not started (or is shutting down)
    ├── BrokerUnavailableError the broker cannot be reached; nothing was accepted
    ├── ChannelLimitError      the broker holds as many channels as it may
    ├── LimitExceededError     a request went past a size, time, count or rate limit (413, 408, 429)
    ├── AuthenticationError    missing, unknown, malformed or expired credentials (401)
    ├── PermissionDeniedError  valid credentials that do not grant this channel or action (403)
    ├── AuthUnavailableError   the JWKS endpoint cannot be reached to check a token (503)
    └── MissingDependencyError an optional extra is not installed (also an ImportError)

Foreign exceptions (redis-py, OS errors) are translated at the broker boundary with ``raise ... from exc``.
"""

from __future__ import annotations


class SSEHubError(Exception):
    """Base class of every error ssehub raises on purpose."""


class InvalidValueError(SSEHubError, ValueError):
    """A channel name, event type, id or filter breaks a documented rule.

    ``code`` names the rule for HTTP answers (``INVALID_CHANNEL``, ``INVALID_EVENT``, ...).
    """

    def __init__(self, message: str, code: str = "INVALID_VALUE") -> None:
        super().__init__(message)
        self.code = code


class UnknownChannelError(InvalidValueError):
    """A well-formed channel name that the configured channel patterns (SSEHUB_CHANNELS) do not allow."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "UNKNOWN_CHANNEL")


class ConnectionLimitError(SSEHubError):
    """The hub already serves ``max_connections`` streams."""


class HubNotRunningError(SSEHubError):
    """The hub is not started, or is shutting down."""


class InvalidEventIdError(SSEHubError, ValueError):
    """A Last-Event-ID that ssehub did not issue (malformed)."""


class BrokerUnavailableError(SSEHubError):
    """The broker cannot be reached. Nothing was stored or delivered."""


class ChannelLimitError(SSEHubError):
    """Publishing would create a channel beyond the broker's channel limit."""


class AuthenticationError(SSEHubError):
    """Credentials are missing, unknown, malformed or expired (HTTP 401).

    ``code`` is ``UNAUTHORIZED`` (none given), ``INVALID_TOKEN`` or ``TOKEN_EXPIRED``. The message never
    contains the credential.
    """

    def __init__(self, message: str, code: str = "INVALID_TOKEN") -> None:
        super().__init__(message)
        self.code = code


class PermissionDeniedError(SSEHubError):
    """Valid credentials that do not grant this channel or action (HTTP 403, ``FORBIDDEN``)."""


class AuthUnavailableError(SSEHubError):
    """The keys to check a token with cannot be fetched (JWKS endpoint down); try again later (HTTP 503)."""


class MissingDependencyError(SSEHubError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"{package} is not installed. Install it with: pip install 'ssehub[{extra}]'")


class LimitExceededError(SSEHubError):
    """A request went past one of the limits of ``ssehub.limits``: its size, time, count or rate.

    Attributes:
        status: the HTTP status to answer (408, 413 or 429; 400 when the client went away mid-body).
        code: the JSON error code (``TOO_MANY_STREAMS``, ``RATE_LIMITED``, ``PAYLOAD_TOO_LARGE``, ...).
        retry_after: seconds after which a retry may succeed, if that helps the client.
        close: the request body was not read to its end: the answer must close the connection.
    """

    def __init__(
        self, message: str, code: str, status: int, *, retry_after: int | None = None, close: bool = False
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.retry_after = retry_after
        self.close = close
