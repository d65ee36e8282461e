"""JSON Web Tokens: verification with PyJWT (extra ``ssehub[auth]``) and the claims that become a :class:`Grant`.

Keys and algorithms are fixed by configuration, never by the token: a token's ``alg`` header must be one of
``SSEHUB_JWT_ALGORITHMS`` and picks the key family: HMAC algorithms (``HS256`` ...) verify with
``SSEHUB_JWT_SECRET``, the others with the public key of ``SSEHUB_JWT_PUBLIC_KEY_FILE`` or the JWKS of
``SSEHUB_JWT_JWKS_URL``. So ``alg: none`` is refused, and so is an HS256 token signed with the RSA public key
(HS256 is not accepted when only a public key is configured; PyJWT also refuses a PEM key as an HMAC secret).

Claims (the claim object's name is ``SSEHUB_JWT_CLAIM``, default ``ssehub``, after Mercure's ``mercure`` claim)::

    {
      "sub": "u42",                 # may subscribe to user:u42
      "sid": "ab12",                # may subscribe to session:ab12
      "exp": 1764040300,            # required; nbf and iat are checked when present
      "aud": "...", "iss": "...",   # checked when SSEHUB_JWT_AUDIENCE / SSEHUB_JWT_ISSUER are set
      "ssehub": {
        "subscribe": ["download:*", "system:notifications"],
        "publish": ["chat:room1"],
        "admin": false
      }
    }

The JWKS is fetched off the event loop, cached for five minutes, refetched at once for an unknown ``kid`` (at
most once a second, so random key ids cannot make ssehub hammer the identity provider), and a cached key
keeps working while the endpoint is briefly down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssehub.exceptions import AuthenticationError, AuthUnavailableError, MissingDependencyError
from ssehub.grants import NOTHING, ChannelPatterns, Grant

if TYPE_CHECKING:
    from ssehub.settings import Settings

logger = logging.getLogger("ssehub.auth")

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
#: The algorithms used when SSEHUB_JWT_ALGORITHMS is empty, by the kind of key configured.
DEFAULT_HMAC = ("HS256",)
DEFAULT_ASYMMETRIC = ("RS256", "ES256")

_JWKS_TTL = 300.0
_JWKS_MIN_REFRESH = 1.0
_JWKS_TIMEOUT = 5.0
#: Tokens whose grant is kept after verification (a client reconnecting with the same token skips the check).
_VERIFIED_CACHE_SIZE = 1024


def effective_algorithms(
    configured: list[str], *, secret: bool, public_key: bool
) -> tuple[tuple[str, ...], str | None]:
    """The algorithms tokens may use, and an error message if the configuration is inconsistent.

    Empty ``configured``: HS256 with a secret, RS256 and ES256 with a public key or JWKS (both with both).
    """
    if not configured:
        derived = (DEFAULT_HMAC if secret else ()) + (DEFAULT_ASYMMETRIC if public_key else ())
        return derived, None
    unknown = [alg for alg in configured if alg not in HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS]
    if unknown:
        supported = ", ".join(sorted(HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS))
        return (), f"jwt_algorithms: unsupported {', '.join(unknown)} (supported: {supported}; never 'none')"
    if any(alg in HMAC_ALGORITHMS for alg in configured) and not secret:
        return (), "jwt_algorithms names an HMAC algorithm (HS*) but jwt_secret is not set"
    if any(alg in ASYMMETRIC_ALGORITHMS for alg in configured) and not public_key:
        return (), "jwt_algorithms names a public-key algorithm but neither jwt_public_key_file nor jwt_jwks_url is set"
    if secret and not any(alg in HMAC_ALGORITHMS for alg in configured):
        return (), "jwt_secret is set but jwt_algorithms names no HMAC algorithm (HS256, HS384, HS512)"
    if public_key and not any(alg in ASYMMETRIC_ALGORITHMS for alg in configured):
        return (), "a public key (file or JWKS) is set but jwt_algorithms names no public-key algorithm"
    return tuple(dict.fromkeys(configured)), None


def _key_type_for(alg: str) -> str:
    """The JWK key type (``kty``) an asymmetric algorithm needs."""
    if alg.startswith(("RS", "PS")):
        return "RSA"
    if alg.startswith("ES"):
        return "EC"
    return "OKP"


def _import_jwt() -> Any:
    try:
        import jwt
    except ImportError as exc:
        raise MissingDependencyError("PyJWT", "auth") from exc
    return jwt


def _key_type_of(key: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC"
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "OKP"
    raise ValueError(f"unsupported public key type {type(key).__name__}")


def _load_public_key(path: str) -> tuple[Any, str]:
    """The public key of a PEM file and its key type.

    Raises:
        ValueError: unreadable, not a PEM public key, or of an unsupported type.
    """
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"jwt_public_key_file {path!r} cannot be read: {exc.strerror}") from exc
    try:
        key = load_pem_public_key(data)
    except ValueError as exc:
        raise ValueError(f"jwt_public_key_file {path!r} does not hold a PEM public key") from exc
    return key, _key_type_of(key)


class _JWKS:
    """A JWKS endpoint's signing keys by ``kid``, fetched with PyJWKClient in a thread."""

    def __init__(self, jwt: Any, url: str) -> None:
        self._jwt = jwt
        self._client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=_JWKS_TIMEOUT)
        self._url = url
        self._keys: dict[str, tuple[Any, str | None, str]] = {}
        self._fetched_at = -math.inf
        self._lock = asyncio.Lock()

    async def key(self, kid: str | None, alg: str) -> Any:
        """The key for ``kid`` (any key if the set has one and the token names none).

        Raises:
            AuthenticationError: no such key, or it does not fit ``alg``.
            AuthUnavailableError: the endpoint cannot be reached and no key is cached.
        """
        entry = self._lookup(kid) if time.monotonic() - self._fetched_at < _JWKS_TTL else None
        if entry is None:
            async with self._lock:
                age = time.monotonic() - self._fetched_at
                entry = self._lookup(kid) if age < _JWKS_TTL else None
                if entry is None and age >= _JWKS_MIN_REFRESH:
                    await self._refresh()
                    entry = self._lookup(kid)
        if entry is None:
            raise AuthenticationError(f"the token's key id {str(kid)[:64]!r} is not in the JWKS")
        key, declared_alg, kty = entry
        if (declared_alg is not None and declared_alg != alg) or kty != _key_type_for(alg):
            raise AuthenticationError(f"the token's algorithm {alg} does not match its key")
        return key

    def _lookup(self, kid: str | None) -> tuple[Any, str | None, str] | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        self._fetched_at = time.monotonic()
        jwt = self._jwt
        try:
            data = await asyncio.to_thread(self._client.fetch_data)
        except (jwt.PyJWKClientError, ValueError, OSError) as exc:
            if self._keys:
                logger.warning("JWKS %s cannot be fetched (%s); keeping the cached keys", self._url, exc)
                return
            raise AuthUnavailableError("the token's signing keys cannot be fetched; try again") from exc
        keys: dict[str, tuple[Any, str | None, str]] = {}
        for item in data.get("keys", []) if isinstance(data, dict) else []:
            # Symmetric ("oct") keys are never taken from a JWKS: that would let the key's publisher mint HS256.
            if (
                not isinstance(item, dict)
                or item.get("kty") not in {"RSA", "EC", "OKP"}
                or item.get("use", "sig") != "sig"
            ):
                continue
            try:
                jwk = jwt.PyJWK(item)
            except (jwt.PyJWTError, ValueError, KeyError) as exc:
                logger.warning("JWKS %s: skipping key %r: %s", self._url, item.get("kid"), exc)
                continue
            keys[str(item.get("kid", ""))] = (jwk.key, item.get("alg"), item["kty"])
        if not keys:
            logger.warning("JWKS %s holds no usable signing key", self._url)
        self._keys = keys


class _VerifiedTokens:
    """Grants of recently verified tokens, by the token's exact text, until they expire (bounded, oldest out).

    Clients reconnect with the same token: after the connection timeout, a dropped connection, a resync or a
    server's restart of streams, often thousands at once. Checking a signature costs 0.1-0.4 ms in PyJWT; a
    dict lookup does not. The text includes the signature, so only a token that verified can hit; expiry is
    checked on every hit. The trade-off: a token verified once stays accepted until its ``exp`` even if its key
    is withdrawn from the JWKS meanwhile, which is the JWT model anyway (short-lived tokens, docs/security.md).
    """

    __slots__ = ("_grants",)

    def __init__(self) -> None:
        self._grants: dict[str, Grant] = {}

    def get(self, token: str) -> Grant | None:
        grant = self._grants.get(token)
        if grant is not None and grant.expires_at is not None and grant.expires_at <= time.time():
            del self._grants[token]
            return None
        return grant

    def put(self, token: str, grant: Grant) -> None:
        grants = self._grants
        if len(grants) >= _VERIFIED_CACHE_SIZE:
            del grants[next(iter(grants))]
        grants[token] = grant


class TokenVerifier:
    """Verifies JWTs as configured and turns their claims into a :class:`Grant`.

    Raises:
        MissingDependencyError: PyJWT is not installed (``pip install 'ssehub[auth]'``).
        ValueError: the public key file cannot be used.
    """

    def __init__(self, settings: Settings) -> None:
        self._jwt = jwt = _import_jwt()
        secret = settings.jwt_secret.get_secret_value()
        public = bool(settings.jwt_public_key_file or settings.jwt_jwks_url)
        algorithms, problem = effective_algorithms(settings.jwt_algorithms, secret=bool(secret), public_key=public)
        if problem:  # Settings refuse this already; kept for a verifier built by hand
            raise ValueError(problem)
        self.algorithms = frozenset(algorithms)
        self._secret = secret.encode("utf-8") if secret else None
        self._public_key: tuple[Any, str] | None = None
        if settings.jwt_public_key_file:
            self._public_key = _load_public_key(settings.jwt_public_key_file)
        self._jwks = _JWKS(jwt, settings.jwt_jwks_url) if settings.jwt_jwks_url else None
        self._audience = settings.jwt_audience or None
        self._issuer = settings.jwt_issuer or None
        self._leeway = settings.jwt_leeway
        self._claim = settings.jwt_claim
        self._verified = _VerifiedTokens()

    async def verify(self, token: str) -> Grant:
        """Check ``token`` and return its grant.

        Raises:
            AuthenticationError: code ``TOKEN_EXPIRED`` or ``INVALID_TOKEN``.
            AuthUnavailableError: the JWKS cannot be fetched.
        """
        cached = self._verified.get(token)
        if cached is not None:
            return cached
        jwt = self._jwt
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthenticationError("the token is not a well-formed JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise AuthenticationError(f"the token's algorithm {str(alg)[:16]!r} is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthenticationError("the token's kid is not a string")
        key = await self._key(alg, kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("the token has expired", "TOKEN_EXPIRED") from None
        except jwt.ImmatureSignatureError:
            raise AuthenticationError("the token is not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationError("the token is for another audience (aud)") from None
        except jwt.InvalidIssuerError:
            raise AuthenticationError("the token is from another issuer (iss)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationError(f"the token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise AuthenticationError("the token's signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"the token is not valid ({type(exc).__name__})") from None
        grant = grant_from_claims(claims, self._claim, self._leeway)
        self._verified.put(token, grant)
        return grant

    async def _key(self, alg: str, kid: str | None) -> Any:
        if alg in HMAC_ALGORITHMS:
            return self._secret
        if self._public_key is not None:
            key, kty = self._public_key
            if kty == _key_type_for(alg):
                return key
            if self._jwks is None:
                raise AuthenticationError(f"the token's algorithm {alg} does not match the configured public key")
        if self._jwks is None:  # unreachable: algorithms are checked against the configured keys
            raise AuthenticationError(f"no key is configured for {alg}")
        return await self._jwks.key(kid, alg)


def _patterns(claim: dict[str, Any], name: str, claim_name: str) -> ChannelPatterns:
    value = claim.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise AuthenticationError(f"the claim {claim_name}.{name} must be a list of channel patterns")
    try:
        return ChannelPatterns.parse(value) if value else NOTHING
    except ValueError as exc:
        raise AuthenticationError(f"the claim {claim_name}.{name}: {exc}") from None


def grant_from_claims(claims: dict[str, Any], claim_name: str = "ssehub", leeway: float = 0.0) -> Grant:
    """The grant of verified claims (see the module docstring for the claim names).

    Raises:
        AuthenticationError: a claim has the wrong type or an invalid pattern (``INVALID_TOKEN``).
    """
    subject, session = claims.get("sub"), claims.get("sid")
    if subject is not None and not isinstance(subject, str):
        raise AuthenticationError("the claim sub must be a string")
    if session is not None and not isinstance(session, str):
        raise AuthenticationError("the claim sid must be a string")
    claim = claims.get(claim_name, {})
    if not isinstance(claim, dict):
        raise AuthenticationError(f"the claim {claim_name} must be an object")
    admin = claim.get("admin", False)
    if not isinstance(admin, bool):
        raise AuthenticationError(f"the claim {claim_name}.admin must be true or false")
    exp = claims.get("exp")
    return Grant.build(
        "jwt",
        f"jwt:{subject[:64]}" if subject else "jwt",
        subject=subject,
        session=session,
        subscribe=_patterns(claim, "subscribe", claim_name),
        publish=_patterns(claim, "publish", claim_name),
        admin=admin,
        expires_at=float(exp) + leeway if isinstance(exp, int | float) else None,
    )


def issue_token(
    key: Any,
    *,
    sub: str | None = None,
    sid: str | None = None,
    subscribe: list[str] | None = None,
    publish: list[str] | None = None,
    admin: bool = False,
    ttl: float = 600.0,
    algorithm: str = "HS256",
    claim: str = "ssehub",
    headers: dict[str, Any] | None = None,
    **extra: Any,
) -> str:
    """A token ssehub accepts, for your backend (or tests and demos) to hand to a client.

    Args:
        key: the HS256 secret, or the private key (PEM or ``cryptography`` object) for RS256/ES256.
        sub: the user (grants ``user:<sub>``); sid: the session (grants ``session:<sid>``).
        subscribe, publish: channel patterns; admin: per-channel details in ``/health``.
        ttl: seconds until ``exp``: keep it short, a stream ends when its token expires.
        algorithm, claim, headers: as configured on the hub (``SSEHUB_JWT_*``); ``headers`` e.g. ``{"kid": ...}``.
        extra: more claims (``aud``, ``iss``, ...).

    Raises:
        MissingDependencyError: PyJWT is not installed.
    """
    jwt = _import_jwt()
    now = int(time.time())
    claims: dict[str, Any] = {"iat": now, "exp": int(now + ttl), **extra}
    if sub is not None:
        claims["sub"] = sub
    if sid is not None:
        claims["sid"] = sid
    grant: dict[str, Any] = {}
    if subscribe:
        grant["subscribe"] = list(subscribe)
    if publish:
        grant["publish"] = list(publish)
    if admin:
        grant["admin"] = True
    if grant:
        claims[claim] = grant
    text: str = jwt.encode(claims, key, algorithm=algorithm, headers=headers)
    return text


__all__ = ["TokenVerifier", "effective_algorithms", "grant_from_claims", "issue_token"]
