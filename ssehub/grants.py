"""Grants: which channels a caller may subscribe to and publish to, and the channel pattern rules.

Pattern rules (the same everywhere: API keys, JWT claims, ``SSEHUB_PUBLIC_CHANNELS``):

- ``*`` alone matches every channel;
- a pattern ending in ``*`` matches every channel that starts with what comes before the star:
  ``download:*`` matches ``download:updates`` and ``download:42`` (and ``download:`` itself);
- anything else matches exactly that one channel: ``user:u4`` matches ``user:u4`` and NOT ``user:u42``.

A star anywhere but at the end, or any character a channel name cannot hold, makes the pattern invalid (a
configuration error, or a token refused as INVALID_TOKEN). Put the separator before the star: ``user*`` would
also match ``users:all``.

A :class:`Grant` is what one authentication produced: who (subject, session, a name for logs) and what
(subscribe and publish patterns, admin). It is immutable, computed once per stream or publish request, and the
stream carries it; nothing is re-derived per delivered event.

Per-user and per-session channels: a grant with subject ``u42`` may subscribe to ``user:u42``, and one with
session id ``ab12`` to ``session:ab12``, without listing them. A subject or session id that would not make a
valid channel name (see :mod:`ssehub.events`: 1-128 of ``A-Z a-z 0-9 _ . : -`` in total) gets no implicit
channel.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from ssehub.events import CHANNEL_PATTERN

#: What a pattern may look like: ``*``, or a channel name, or the start of one followed by ``*``.
_PATTERN_RE = re.compile(r"\*|[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}\*?")
_CHANNEL_RE = re.compile(CHANNEL_PATTERN)
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")

#: The channel prefixes of per-user and per-session channels.
USER_PREFIX = "user:"
SESSION_PREFIX = "session:"

Scope = Literal["subscribe", "publish", "admin"]


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` if it follows the pattern rules (module docstring).

    Raises:
        ValueError: it does not (the message says why).
    """
    if not isinstance(pattern, str) or _PATTERN_RE.fullmatch(pattern) is None:
        raise ValueError(
            f"invalid channel pattern {str(pattern)[:140]!r}: use '*', a channel name, or a channel name prefix "
            "followed by '*' (1-128 of A-Z a-z 0-9 _ . : -, starting with a letter or digit)"
        )
    return pattern


@dataclass(frozen=True, slots=True)
class ChannelPatterns:
    """A compiled set of channel patterns: exact names in a set, prefixes in a tuple, ``*`` as a flag."""

    exact: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    everything: bool = False

    @classmethod
    def parse(cls, patterns: Iterable[str]) -> ChannelPatterns:
        """Compile patterns.

        Raises:
            ValueError: a pattern breaks the rules.
        """
        exact: set[str] = set()
        prefixes: set[str] = set()
        everything = False
        for pattern in patterns:
            validate_pattern(pattern)
            if pattern == "*":
                everything = True
            elif pattern.endswith("*"):
                prefixes.add(pattern[:-1])
            else:
                exact.add(pattern)
        return cls(frozenset(exact), tuple(sorted(prefixes)), everything)

    def matches(self, channel: str) -> bool:
        """Whether ``channel`` is matched by one of the patterns."""
        return self.everything or channel in self.exact or channel.startswith(self.prefixes)

    def with_exact(self, names: Iterable[str]) -> ChannelPatterns:
        """These patterns plus some exact channel names."""
        extra = frozenset(names)
        if not extra:
            return self
        return ChannelPatterns(self.exact | extra, self.prefixes, self.everything)

    def __bool__(self) -> bool:
        return self.everything or bool(self.exact) or bool(self.prefixes)

    def describe(self) -> list[str]:
        """The patterns as text (for messages and ``/health``)."""
        if self.everything:
            return ["*"]
        return sorted(self.exact) + [prefix + "*" for prefix in self.prefixes]


NOTHING = ChannelPatterns()
EVERYTHING = ChannelPatterns(everything=True)


def user_channel(subject: str | None) -> str | None:
    """The per-user channel of a subject (``user:<subject>``), or None if that is not a valid channel name."""
    if not subject:
        return None
    name = USER_PREFIX + subject
    return name if _CHANNEL_RE.fullmatch(name) else None


def session_channel(session: str | None) -> str | None:
    """The per-session channel of a session id (``session:<sid>``), or None if that is not a valid channel name."""
    if not session:
        return None
    name = SESSION_PREFIX + session
    return name if _CHANNEL_RE.fullmatch(name) else None


GrantKind = Literal["open", "anonymous", "api_key", "jwt"]


@dataclass(frozen=True, slots=True)
class Grant:
    """What one caller may do, computed once per stream or publish request.

    Attributes:
        kind: how it was obtained: ``open`` (no credentials configured), ``anonymous`` (public channels only),
            ``api_key`` or ``jwt``.
        name: who, for logs (an API key's name, ``jwt:<sub>``); never a secret.
        subject: the JWT ``sub`` (grants ``user:<sub>``), if any.
        session: the session id (JWT ``sid``; grants ``session:<sid>``), if any.
        subscribe: channel patterns the caller may subscribe to (implicit user and session channels included).
        publish: channel patterns the caller may publish to.
        admin: may see per-channel and broker details in ``/health``.
        expires_at: Unix time at which the credential stops being valid (leeway included); None: never.
        implicit: the ``user:<sub>`` and ``session:<sid>`` channels included in ``subscribe``.
    """

    kind: GrantKind
    name: str
    subject: str | None = None
    session: str | None = None
    subscribe: ChannelPatterns = NOTHING
    publish: ChannelPatterns = NOTHING
    admin: bool = False
    expires_at: float | None = None
    implicit: tuple[str, ...] = field(default=())

    @classmethod
    def build(
        cls,
        kind: GrantKind,
        name: str,
        *,
        subject: str | None = None,
        session: str | None = None,
        subscribe: ChannelPatterns = NOTHING,
        publish: ChannelPatterns = NOTHING,
        admin: bool = False,
        expires_at: float | None = None,
    ) -> Grant:
        """A grant whose subscribe patterns include the subject's ``user:`` and the session's ``session:`` channel."""
        implicit = tuple(name for name in (user_channel(subject), session_channel(session)) if name is not None)
        return cls(kind, name, subject, session, subscribe.with_exact(implicit), publish, admin, expires_at, implicit)

    def can_subscribe(self, channel: str) -> bool:
        """Whether this grant allows subscribing to ``channel``."""
        return self.subscribe.matches(channel)

    def can_publish(self, channel: str) -> bool:
        """Whether this grant allows publishing to ``channel``."""
        return self.publish.matches(channel)


#: The grant of every request when no credentials are configured at all (the hub runs open).
OPEN_GRANT = Grant("open", "open", subscribe=EVERYTHING, publish=EVERYTHING, admin=True)


class ApiKey(BaseModel):
    """One configured API key (an item of ``SSEHUB_API_KEYS``).

    Give either ``key`` (the key itself) or ``sha256`` (the hex SHA-256 of the key, so the configuration does not
    hold the secret). ``scopes`` say what the key may do, ``channels`` on which channels (pattern rules above);
    ``name`` is what logs show (default: ``sha256:`` and the first 8 hex digits of the digest).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: SecretStr | None = None
    sha256: str | None = Field(None, description="hex SHA-256 of the key")
    scopes: list[Scope] = Field(min_length=1)
    channels: list[str] = Field(default_factory=list)
    name: str | None = Field(None, max_length=64)

    @model_validator(mode="after")
    def _check(self) -> ApiKey:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError('an API key needs exactly one of "key" or "sha256"')
        if self.key is not None and len(self.key.get_secret_value()) < 16:
            raise ValueError("an API key must be at least 16 characters long")
        if self.sha256 is not None and _HEX64.fullmatch(self.sha256) is None:
            raise ValueError('"sha256" must be 64 hex digits (the SHA-256 of the key)')
        for pattern in self.channels:
            validate_pattern(pattern)
        if {"subscribe", "publish"} & set(self.scopes) and not self.channels:
            raise ValueError(
                f'API key {self.display_name!r} has scope subscribe or publish but no "channels" '
                '(use ["*"] for every channel)'
            )
        return self

    @property
    def digest(self) -> bytes:
        """The SHA-256 digest of the key (what requests are compared with)."""
        if self.key is not None:
            return hashlib.sha256(self.key.get_secret_value().encode("utf-8")).digest()
        assert self.sha256 is not None  # guaranteed by the validator
        return bytes.fromhex(self.sha256)

    @property
    def display_name(self) -> str:
        """The name logs show."""
        return self.name or f"sha256:{self.digest.hex()[:8]}"

    def grant(self) -> Grant:
        """The grant this key gives."""
        patterns = ChannelPatterns.parse(self.channels)
        return Grant.build(
            "api_key",
            self.display_name,
            subscribe=patterns if "subscribe" in self.scopes else NOTHING,
            publish=patterns if "publish" in self.scopes else NOTHING,
            admin="admin" in self.scopes,
        )


__all__ = [
    "EVERYTHING",
    "NOTHING",
    "OPEN_GRANT",
    "SESSION_PREFIX",
    "USER_PREFIX",
    "ApiKey",
    "ChannelPatterns",
    "Grant",
    "session_channel",
    "user_channel",
    "validate_pattern",
]
