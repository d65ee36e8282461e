"""Settings: the one place that reads the environment.

Every setting is an environment variable with the prefix ``SSEHUB_`` (also read from a ``.env`` file in the
working directory). The README's configuration table lists them; ``tests/test_settings.py`` checks that the
table and this class agree.

A setting given in several places resolves in one order, first wins: keyword arguments (``ssehub serve``'s
``--host``/``--port`` flags), the environment, ``.env``, the default.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from ssehub.events import validate_channel
from ssehub.exceptions import InvalidValueError
from ssehub.grants import ApiKey, validate_pattern
from ssehub.tokens import effective_algorithms

_ORIGIN = re.compile(r"https?://[a-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9a-f:.]+\](:[0-9]{1,5})?")

DEFAULT_CHANNELS = ("download:updates", "queue:updates", "system:notifications")
#: A Redis key prefix: what every key of the Redis broker and the publishers starts with.
_REDIS_PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}")


def validate_redis_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a valid Redis key prefix (the one rule, for settings and direct arguments).

    Raises:
        InvalidValueError: it is not.
    """
    if not isinstance(prefix, str) or _REDIS_PREFIX_RE.fullmatch(prefix) is None:
        raise InvalidValueError(
            f"invalid Redis key prefix {str(prefix)[:70]!r}: use 1-64 characters from A-Z a-z 0-9 _ . : -, "
            "starting with a letter or digit"
        )
    return prefix


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """ssehub's configuration. Build it with keyword arguments, or let it read ``SSEHUB_*`` variables."""

    model_config = SettingsConfigDict(
        env_prefix="SSEHUB_", env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    enable_sse: bool = Field(True, description="Serve streams; false answers 503 SSE_DISABLED.")
    enable_test_endpoints: bool = Field(
        False, description="Serve `POST {prefix}/test/echo` for application tests (see docs/python-client.md)."
    )
    host: str = Field("127.0.0.1", description="Address `ssehub serve` binds to.")
    port: int = Field(8000, ge=0, le=65535, description="Port `ssehub serve` listens on.")
    prefix: str = Field("/api/v1/events", description="Path prefix of the HTTP API.")
    demo: bool = Field(
        False, description="Serve the demo dashboard at `/` and run its download simulator (`make run` sets it)."
    )
    broker_url: str = Field(
        "memory://",
        description="`memory://` (one process), or `redis://`, `rediss://`, `redis+sentinel://`, `redis+cluster://`, "
        "`rediss+cluster://` (see docs/scaling.md).",
    )
    heartbeat_interval: float = Field(30.0, gt=0, description="Seconds between heartbeat events on every stream.")
    max_connections: int = Field(1000, ge=1, description="Open streams per process; more answer 503.")
    connection_timeout: float = Field(
        300.0, gt=0, description="Longest life of one stream in seconds; the client then reconnects and resumes."
    )
    retry_ms: int = Field(3000, ge=0, description="Reconnection delay sent to clients (`retry:`), milliseconds.")
    history_size: int = Field(1000, ge=1, description="Events kept per channel for resume.")
    history_ttl: float = Field(3600.0, gt=0, description="Seconds an event is kept for resume.")
    max_channels: int = Field(10000, ge=1, description="Channels with history a broker keeps; more answer 429.")
    channels: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"],
        description="Comma-separated channel name patterns (`*` wildcard) that may be used; others answer 404.",
    )
    default_channels: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_CHANNELS),
        description="Channels of `/stream` when the request names none.",
    )
    max_payload_bytes: int = Field(65536, ge=1, description="Largest `POST /publish` body; larger answer 413.")
    max_buffer_bytes: int = Field(
        1048576, ge=1024, description="Bytes queued for one slow stream before it is disconnected (it resumes)."
    )
    max_channels_per_stream: int = Field(32, ge=1, description="Channels one stream may subscribe to.")
    # CORS, limits and proxies (docs/security.md); the mechanisms live in cors.py, limits.py, guard.py.
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated exact origins (`https://app.example.com`) allowed cross-origin, with "
        "credentials; empty sends no CORS headers.",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="Comma-separated proxy IPs/CIDRs whose `X-Forwarded-For` gives the client address "
        "(rightmost untrusted hop); empty trusts none.",
    )
    max_streams_per_client: int = Field(
        100, ge=0, description="Open streams per client address; more answer 429 TOO_MANY_STREAMS (0: no limit)."
    )
    max_streams_per_identity: int = Field(
        20, ge=0, description="Open streams per authenticated identity; more answer 429 TOO_MANY_STREAMS (0: no limit)."
    )
    publish_rate: float = Field(
        100.0, ge=0, description="`POST /publish` requests per second per key or client address (0: no limit)."
    )
    publish_burst: int = Field(
        200, ge=1, description="Publish requests allowed at once before `SSEHUB_PUBLISH_RATE` applies."
    )
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds a client may take to send a request's headers (`ssehub serve`); then 408."
    )
    body_timeout: float = Field(10.0, gt=0, description="Seconds a client may take to send a publish body; then 408.")
    max_header_bytes: int = Field(
        65536, ge=1024, description="Largest request line plus headers (`ssehub serve`); larger answer 414 or 431."
    )
    max_drain_bytes: int = Field(
        1048576, ge=0, description="Bytes of a refused request body read and discarded so the client sees the answer."
    )
    redis_pool_size: int = Field(8, ge=1, description="Command connections per process on the Redis broker.")
    redis_prefix: str = Field(
        "ssehub", description="Key prefix (and Cluster hash tag) of the Redis broker; hubs and publishers must agree."
    )
    fast_path: bool = Field(
        True,
        description="Write streams straight to uvicorn's transport when served by uvicorn (httptools, HTTP/1.1), "
        "and let `ssehub serve` answer stream requests itself on uvicorn's connection; false: always the "
        "portable ASGI writer.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level of `ssehub serve`."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="`text`, or `json`: one JSON object per line (see docs/operations.md)."
    )
    shutdown_grace: float = Field(
        10.0,
        gt=0,
        description="Seconds streams get on SIGTERM to end and write what is queued; the process exits at most 2 s "
        "later, whatever is left (see docs/operations.md).",
    )
    metrics: Literal["public", "admin", "off"] = Field(
        "public",
        description="Prometheus metrics at `/metrics`: `public`, `admin` (an API key or token with the `admin` "
        "scope, sent as `Authorization: Bearer`) or `off`.",
    )
    # Credentials and grants (ssehub/auth.py, docs/security.md). None configured: the hub runs open.
    api_keys: list[ApiKey] = Field(
        default_factory=list,
        description='JSON list of API keys: `[{"key" or "sha256": ..., "scopes": [...], "channels": [...], '
        '"name": ...}]` (docs/security.md).',
    )
    public_channels: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated channel patterns anyone may subscribe to without credentials.",
    )
    auth_cookie: str = Field(
        "",
        pattern=r"^[A-Za-z0-9_\-.]{0,64}$",
        description="Name of a cookie that may carry the token of a stream request (same-site apps); empty: none.",
    )
    allow_open: bool = Field(
        False, description="Let `ssehub serve` bind to a non-loopback address with no credentials configured."
    )
    jwt_secret: SecretStr = Field(SecretStr(""), description="Shared secret of HS256 tokens.")
    jwt_public_key_file: str = Field("", description="PEM public key file of RS256/ES256 tokens.")
    jwt_jwks_url: str = Field(
        "", description="JWKS URL of RS256/ES256 tokens (cached; refetched for an unknown `kid`)."
    )
    jwt_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated token algorithms; empty: HS256 with a secret, RS256,ES256 with a public key.",
    )
    jwt_audience: str = Field("", description="Required `aud` of tokens; empty: tokens must carry no `aud`.")
    jwt_issuer: str = Field("", description="Required `iss` of tokens; empty: not checked.")
    jwt_leeway: float = Field(5.0, ge=0, le=300, description="Seconds of clock skew allowed for `exp`, `nbf`, `iat`.")
    jwt_claim: str = Field(
        "ssehub", min_length=1, description="Name of the claim object holding `subscribe`, `publish`, `admin`."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The documented order, spelled out rather than left to the library: arguments, environment, .env.

        (``file_secret_settings`` reads nothing unless a ``secrets_dir`` is configured; it comes last.)
        """
        return init_settings, env_settings, dotenv_settings, file_secret_settings

    _split = field_validator(
        "channels",
        "default_channels",
        "public_channels",
        "jwt_algorithms",
        "allowed_origins",
        "trusted_proxies",
        mode="before",
    )(_split_csv)

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: list[ApiKey]) -> list[ApiKey]:
        digests = [key.digest for key in value]
        if len(set(digests)) != len(digests):
            raise ValueError("the same API key is configured twice")
        return value

    @field_validator("public_channels")
    @classmethod
    def _check_public_channels(cls, value: list[str]) -> list[str]:
        for pattern in value:
            validate_pattern(pattern)
        return value

    @field_validator("jwt_public_key_file")
    @classmethod
    def _check_public_key_file(cls, value: str) -> str:
        if value and not Path(value).is_file():
            raise ValueError(f"jwt_public_key_file {value!r} is not a file")
        return value

    @field_validator("jwt_jwks_url")
    @classmethod
    def _check_jwks_url(cls, value: str) -> str:
        if value and not value.startswith(("https://", "http://")):
            raise ValueError("jwt_jwks_url must be an https:// (or http://) URL")
        return value

    @model_validator(mode="after")
    def _check_jwt(self) -> Settings:
        public_key = bool(self.jwt_public_key_file or self.jwt_jwks_url)
        _, problem = effective_algorithms(
            self.jwt_algorithms, secret=bool(self.jwt_secret.get_secret_value()), public_key=public_key
        )
        if problem:
            raise ValueError(problem)
        secret_bytes = len(self.jwt_secret.get_secret_value().encode())
        needed = max([int(alg[2:]) // 8 for alg in self.jwt_algorithms if alg.startswith("HS")] or [32])
        if 0 < secret_bytes < needed:
            raise ValueError(f"jwt_secret must be at least {needed} bytes (RFC 7518: as long as the HMAC output)")
        if self.jwt_public_key_file and self.jwt_jwks_url:
            raise ValueError("set jwt_public_key_file or jwt_jwks_url, not both")
        return self

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            # Browsers send the serialized origin: lowercase scheme and host, no path, default port left out.
            # Exact comparison is the rule, so a value that can never match is a configuration error.
            if _ORIGIN.fullmatch(origin) is None:
                raise ValueError(
                    f"allowed_origins: {origin!r} is not an exact origin like https://app.example.com or "
                    "http://localhost:3000 (lowercase, no path, no trailing slash, no wildcard)"
                )
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies: {entry!r} is not an IP address or CIDR network") from None
        return value

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        value = value.rstrip("/")
        if value and not value.startswith("/"):
            raise ValueError("prefix must start with '/' (or be empty)")
        return value

    @field_validator("default_channels")
    @classmethod
    def _check_default_channels(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("default_channels must name at least one channel")
        for name in value:
            validate_channel(name)
        return value

    @field_validator("redis_prefix")
    @classmethod
    def _check_redis_prefix(cls, value: str) -> str:
        return validate_redis_prefix(value)

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in {"memory", "redis", "rediss", "redis+sentinel", "redis+cluster", "rediss+cluster"}:
            raise ValueError(
                "broker_url must start with memory://, redis://, rediss://, redis+sentinel://, redis+cluster:// "
                "or rediss+cluster://"
            )
        return value

    @model_validator(mode="after")
    def _check_timing(self) -> Settings:
        if self.heartbeat_interval >= self.connection_timeout:
            raise ValueError("heartbeat_interval must be shorter than connection_timeout")
        return self
