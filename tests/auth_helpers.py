"""Helpers of the authentication tests: keys generated with ``cryptography``, tokens made with PyJWT (or forged
by hand where PyJWT rightly refuses to), and a tiny JWKS server on loopback."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ssehub.testing import free_port

#: An API key long enough for the settings (16+ characters).
KEY_SUBSCRIBE = "sub-key-0123456789abcdef"
KEY_PUBLISH = "pub-key-0123456789abcdef"
KEY_ADMIN = "adm-key-0123456789abcdef"
SECRET = "hs256-secret-for-tests-" + "0123456789abcdef" * 3


def rsa_key() -> rsa.RSAPrivateKey:
    """A fresh 2048-bit RSA key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key."""
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    """The PEM (SubjectPublicKeyInfo) of a private key's public half."""
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def write_public_key(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    """Write the public key PEM to ``path``; return the path as text."""
    path.write_bytes(public_pem(key))
    return str(path)


def claims(
    *,
    sub: str | None = None,
    sid: str | None = None,
    subscribe: list[str] | None = None,
    publish: list[str] | None = None,
    admin: bool | None = None,
    exp_in: float | None = 300,
    **extra: Any,
) -> dict[str, Any]:
    """A claim set: ``exp`` ``exp_in`` seconds from now, the ``ssehub`` claim object from the lists given."""
    now = int(time.time())
    result: dict[str, Any] = {"iat": now}
    if exp_in is not None:
        result["exp"] = int(now + exp_in)
    if sub is not None:
        result["sub"] = sub
    if sid is not None:
        result["sid"] = sid
    grant: dict[str, Any] = {}
    if subscribe is not None:
        grant["subscribe"] = subscribe
    if publish is not None:
        grant["publish"] = publish
    if admin is not None:
        grant["admin"] = admin
    if grant:
        result["ssehub"] = grant
    result.update(extra)
    return result


def token(key: Any = SECRET, alg: str = "HS256", headers: dict[str, Any] | None = None, **kwargs: Any) -> str:
    """A signed JWT with :func:`claims` (``kwargs``) signed by ``key`` with ``alg``."""
    return jwt.encode(claims(**kwargs), key, algorithm=alg, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def forge(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None) -> str:
    """A JWT built by hand: signed with HMAC-SHA256 over ``hmac_key``, or unsigned (``alg: none``) when None."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    if hmac_key is None:
        return signing_input + "."
    signature = hmac.new(hmac_key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str, alg: str) -> dict[str, Any]:
    """The public JWK of ``key`` with ``kid`` and ``alg``."""
    if isinstance(key, rsa.RSAPrivateKey):
        data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    else:
        data = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    data.update(kid=kid, alg=alg, use="sig")
    return dict(data)


class JWKSServer:
    """A JWKS endpoint on a free loopback port; ``keys`` can be changed while it runs (key rotation)."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.requests = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/.well-known/jwks.json"
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                body = json.dumps({"keys": owner.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="jwks", daemon=True)

    @contextlib.contextmanager
    def running(self) -> Iterator[JWKSServer]:
        """Serve until the block ends."""
        self._thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(10)


def api_keys_setting(*entries: dict[str, Any]) -> str:
    """``SSEHUB_API_KEYS`` as the environment holds it (JSON)."""
    return json.dumps(list(entries))


def sha256_hex(key: str) -> str:
    """The hex SHA-256 of a key, as ``"sha256"`` in the configuration."""
    return hashlib.sha256(key.encode()).hexdigest()
