"""Who may subscribe and publish: credentials from a request, checked once, into a :class:`~ssehub.grants.Grant`.

Credentials (all optional, see ``docs/security.md``):

- **API keys** (``SSEHUB_API_KEYS``): each with scopes (``subscribe``, ``publish``, ``admin``) and channel
  patterns. A request's key is hashed with SHA-256 and compared with every configured digest in constant time
  (``hmac.compare_digest``), so the configuration may hold the digest instead of the key.
- **JWT** (``SSEHUB_JWT_*``, :mod:`ssehub.tokens`): grants from the token's claims.
- **Public channels** (``SSEHUB_PUBLIC_CHANNELS``): what a request without credentials may subscribe to.

Where a credential may come from, first found wins: ``Authorization: Bearer <token>``, ``X-API-Key: <key>``,
the ``token`` query parameter (streams only: a browser's EventSource cannot send headers), and the cookie named
by ``SSEHUB_AUTH_COOKIE`` (GET requests only: a cookie on ``POST /publish`` would invite cross-site request
forgery). ssehub never logs a credential; ``ssehub serve`` redacts ``token=`` from its access log
(:mod:`ssehub.redact`).

With nothing configured at all the hub runs **open**: every request may do everything, as before this module
existed, and the hub says so loudly at start-up; ``ssehub serve`` refuses to bind to a non-loopback address
then unless ``SSEHUB_ALLOW_OPEN=true``.

Refusals: :class:`~ssehub.exceptions.AuthenticationError` (401: ``UNAUTHORIZED`` when credentials are needed
and missing, ``INVALID_TOKEN``, ``TOKEN_EXPIRED``), :class:`~ssehub.exceptions.PermissionDeniedError` (403
``FORBIDDEN``), :class:`~ssehub.exceptions.AuthUnavailableError` (503 ``AUTH_UNAVAILABLE``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ssehub.events import validate_channel
from ssehub.exceptions import AuthenticationError, MissingDependencyError, PermissionDeniedError
from ssehub.grants import OPEN_GRANT, ChannelPatterns, Grant
from ssehub.tokens import TokenVerifier

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

    from ssehub.settings import Settings

logger = logging.getLogger("ssehub.auth")

#: The query parameter that carries a token (reserved: never a filter).
TOKEN_PARAM = "token"
#: Longer credentials are refused unread (a JWT with a few dozen patterns is ~1 KiB).
MAX_CREDENTIAL_LENGTH = 8192
_HEALTH_ADMIN_FIELDS = ("channels", "broker")


def jwt_configured(settings: Settings) -> bool:
    """Whether any JWT key material is configured."""
    return bool(settings.jwt_secret.get_secret_value() or settings.jwt_public_key_file or settings.jwt_jwks_url)


def runs_open(settings: Settings) -> bool:
    """Whether no credentials and no public channels are configured: every request may do everything."""
    return not (settings.api_keys or jwt_configured(settings) or settings.public_channels)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def open_bind_refusal(settings: Settings) -> str | None:
    """Why ``ssehub serve`` must not start (open hub on a non-loopback address), or None if it may."""
    if not runs_open(settings) or settings.allow_open or _is_loopback(settings.host):
        return None
    return (
        f"ssehub: refusing to serve on {settings.host} without authentication: anyone who reaches the port could "
        "read every channel and publish anything. Configure SSEHUB_API_KEYS or SSEHUB_JWT_* (see "
        "docs/security.md), bind to 127.0.0.1, or set SSEHUB_ALLOW_OPEN=true if an open hub is what you mean."
    )


def startup_problem(settings: Settings) -> str | None:
    """Why ``ssehub serve`` must not start with these settings (open on a public address, an unusable key file,
    PyJWT missing), as a message; None if it may."""
    refusal = open_bind_refusal(settings)
    if refusal is not None:
        return refusal
    try:
        Authenticator(settings)
    except MissingDependencyError as exc:
        return f"ssehub: JWT settings need PyJWT: {exc}"
    except ValueError as exc:
        return f"ssehub: invalid authentication settings: {exc}"
    return None


class Authenticator:
    """Checks credentials once per stream or publish and returns the caller's :class:`Grant`.

    Args:
        settings: the hub's settings.

    Raises:
        MissingDependencyError: JWT settings without PyJWT installed (``pip install 'ssehub[auth]'``).
        ValueError: the JWT public key file cannot be used.
    """

    def __init__(self, settings: Settings) -> None:
        self._keys = tuple((key.digest, key.grant()) for key in settings.api_keys)
        self._verifier = TokenVerifier(settings) if jwt_configured(settings) else None
        self.public = ChannelPatterns.parse(settings.public_channels)
        self.open = runs_open(settings)
        self._cookie = settings.auth_cookie or None
        self._anonymous = Grant.build("anonymous", "anonymous", subscribe=self.public)

    def announce(self) -> None:
        """Log how the hub authenticates (loudly when it runs open). Called when the hub starts."""
        if self.open:
            logger.warning(
                "ssehub runs OPEN: no credentials are configured, so anyone who can reach this hub may read every "
                "channel and publish anything. Configure SSEHUB_API_KEYS or SSEHUB_JWT_* (docs/security.md)."
            )
            return
        kinds = [f"{len(self._keys)} API key(s)"] if self._keys else []
        if self._verifier is not None:
            kinds.append(f"JWT ({', '.join(sorted(self._verifier.algorithms))})")
        public = ", ".join(self.public.describe()) or "none"
        logger.info("authentication: %s; public channels: %s", " and ".join(kinds) or "none", public)

    def credential(self, connection: HTTPConnection, *, query: bool = True, cookie: bool = True) -> str | None:
        """The credential a request carries, or None (see the module docstring for the sources and order)."""
        headers = connection.headers
        authorization = headers.get("authorization")
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                return value.strip()
        api_key = headers.get("x-api-key")
        if api_key:
            return api_key.strip()
        if query:
            param = connection.query_params.get(TOKEN_PARAM)
            if param:
                return param
        if cookie and self._cookie is not None:
            from_cookie = connection.cookies.get(self._cookie)
            if from_cookie:
                return from_cookie
        return None

    async def authenticate(self, connection: HTTPConnection, *, query: bool = True, cookie: bool = True) -> Grant:
        """The grant of a request: open, anonymous (no credentials), or that of its API key or token.

        Raises:
            AuthenticationError: the credential is unknown, malformed or expired.
            AuthUnavailableError: a token's signing keys cannot be fetched.
        """
        if self.open:
            return OPEN_GRANT
        token = self.credential(connection, query=query, cookie=cookie)
        if token is None:
            return self._anonymous
        return await self.check(token)

    async def check(self, token: str) -> Grant:
        """The grant of an API key or JWT (for code that has a token in hand).

        Raises:
            AuthenticationError: unknown, malformed or expired.
            AuthUnavailableError: a token's signing keys cannot be fetched.
        """
        if self.open:
            return OPEN_GRANT
        if len(token) > MAX_CREDENTIAL_LENGTH:
            raise AuthenticationError(f"the credential is longer than {MAX_CREDENTIAL_LENGTH} characters")
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found: Grant | None = None
        for key_digest, grant in self._keys:
            # Every key is compared (no early exit), each in constant time.
            if hmac.compare_digest(digest, key_digest):
                found = grant
        if found is not None:
            return found
        if self._verifier is not None and token.count(".") == 2:
            return await self._verifier.verify(token)
        raise AuthenticationError("the API key or token is not valid")

    def authorize_subscribe(self, grant: Grant, channels: Sequence[str]) -> None:
        """Check that ``grant`` may subscribe to every channel (public channels are open to all).

        Raises:
            InvalidValueError: a malformed channel name.
            AuthenticationError: ``UNAUTHORIZED``: no credentials were given and a channel is not public.
            PermissionDeniedError: a channel the credentials do not grant.
        """
        if grant.subscribe.everything:
            return  # nothing to check (an open hub): the hub validates the names
        for name in channels:
            validate_channel(name)
            if not (grant.can_subscribe(name) or self.public.matches(name)):
                self._refuse(grant, f"subscribe to {name!r}")

    def authorize_publish(self, grant: Grant, channel: str) -> None:
        """Check that ``grant`` may publish to ``channel``.

        Raises:
            AuthenticationError: ``UNAUTHORIZED``: no credentials were given.
            PermissionDeniedError: the credentials do not grant publishing there.
        """
        if not grant.can_publish(channel):
            self._refuse(grant, f"publish to {channel!r}")

    def _refuse(self, grant: Grant, what: str) -> None:
        if grant.kind == "anonymous":
            raise AuthenticationError(f"credentials are needed to {what}", "UNAUTHORIZED")
        logger.info("refused %r (%s) to %s", grant.name, grant.kind, what)
        raise PermissionDeniedError(f"these credentials may not {what}")

    async def stream_grant(self, connection: HTTPConnection, channels: Sequence[str]) -> Grant:
        """Authenticate a stream request and authorize its channels: the one check a stream makes.

        Raises:
            The errors of :meth:`authenticate` and :meth:`authorize_subscribe`.
        """
        grant = await self.authenticate(connection)
        self.authorize_subscribe(grant, channels)
        return grant

    @staticmethod
    def health_view(health: dict[str, Any], grant: Grant) -> dict[str, Any]:
        """``/health`` as ``grant`` may see it: per-channel and broker details for admins only."""
        if grant.admin:
            return health
        return {name: value for name, value in health.items() if name not in _HEALTH_ADMIN_FIELDS}


__all__ = ["TOKEN_PARAM", "Authenticator", "jwt_configured", "open_bind_refusal", "runs_open", "startup_problem"]
