"""Real nginx and Caddy processes started from the shipped files in deploy/, on free loopback ports.

The files are used as shipped, with only their placeholders filled in (ports, paths, certificates):

- nginx: ``deploy/nginx/<layout>.conf.template`` has ``${NAME}`` placeholders; :func:`render_nginx` replaces
  exactly the names of :data:`NGINX_PLACEHOLDERS` (as ``envsubst 'NAMES'`` does) and leaves nginx's own
  ``$variables`` alone. The file is included in a minimal main ``nginx.conf`` written here (pid, logs and
  temp paths in the test's directory, ``daemon off``), run with ``nginx -p DIR -c DIR/nginx.conf``.
- Caddy: ``deploy/caddy/<layout>.Caddyfile`` reads ``{$NAME:default}`` from the environment; the test sets
  those variables (free ports, ``BIND=127.0.0.1``, ``CADDY_TLS=internal``, ``CADDY_ADMIN=off``) and runs
  ``caddy run --config FILE --adapter caddyfile`` with its data and config directories in the test's directory.

A test that needs a different value (a short read timeout, buffering switched on for a negative control)
passes ``edits``: exact replacements of one line each, which fail loudly if the shipped line changed.

Each process is stopped by its PID. A missing binary is a failure naming the fix, never a skip: ``make test``
installs both (scripts/install-system-deps.sh).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ssehub.testing import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
LAYOUTS = ("same-origin", "api-host")
KINDS = ("nginx", "caddy")

#: The placeholders of the nginx templates, all of them (docs/deployment.md lists them too).
NGINX_PLACEHOLDERS = (
    "SSEHUB_UPSTREAM",
    "SERVER_NAME",
    "HTTP_LISTEN",
    "HTTPS_LISTEN",
    "TLS_CERTIFICATE",
    "TLS_CERTIFICATE_KEY",
    "ACCESS_LOG",
    "SITE_ROOT",
)
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def require_binary(name: str) -> str:
    """The path of ``name``; a clear failure when it is missing (``make test`` installs it)."""
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None)
    if path is None:
        raise RuntimeError(
            f"{name} is not installed: `make test` installs it (scripts/install-system-deps.sh), "
            f"or run `apt-get install {name}`"
        )
    return path


def apply_edits(text: str, edits: Sequence[tuple[str, str]]) -> str:
    """Replace each ``old`` with ``new``; each ``old`` must occur exactly once in ``text``."""
    for old, new in edits:
        count = text.count(old)
        if count != 1:
            raise AssertionError(f"expected {old!r} exactly once in the shipped file, found it {count} times")
        text = text.replace(old, new)
    return text


def render_nginx(template: str, values: Mapping[str, str]) -> str:
    """Fill in the placeholders of an nginx template as ``envsubst`` given their names does.

    Only the names of :data:`NGINX_PLACEHOLDERS` are replaced (nginx's own ``$variables`` stay); each must be
    given a value.
    """
    missing = set(NGINX_PLACEHOLDERS) - set(values)
    unknown = set(values) - set(NGINX_PLACEHOLDERS)
    if missing or unknown:
        raise ValueError(f"give exactly the placeholders: missing {sorted(missing)}, unknown {sorted(unknown)}")

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        return values[name] if name in values else match.group(0)

    return _PLACEHOLDER.sub(replace, template)


@dataclass(frozen=True)
class TLSFiles:
    """A test certificate authority and a server certificate it signed, as PEM files."""

    ca: Path
    certificate: Path
    key: Path


def make_test_ca(directory: Path, names: Sequence[str] = ("localhost",), *, client_auth: bool = False) -> TLSFiles:
    """Generate a CA and a server certificate for ``names`` and 127.0.0.1 (ECDSA P-256, valid for a day).

    ``client_auth``: the certificate may also authenticate its holder as a client (Redis Cluster nodes present
    it to each other on the cluster bus).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ssehub test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    alt_names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, *([ExtendedKeyUsageOID.CLIENT_AUTH] if client_auth else [])]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


@dataclass
class Proxy:
    """A running proxy: its HTTPS and HTTP base URLs, the CA that verifies it, its process and logs.

    ``log`` is the proxy's own output (errors); ``access_log`` where it logs requests (Caddy: the same file).
    """

    kind: str
    layout: str
    https_url: str
    http_url: str
    ca: Path
    process: subprocess.Popen[bytes]
    log: Path
    access_log: Path
    directory: Path

    def output(self) -> str:
        """The proxy's log so far (for failure messages)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        """Stop the proxy by its PID: SIGTERM (fast shutdown, open streams are cut), SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _wait_listening(process: subprocess.Popen[bytes], ports: Sequence[int], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending:
        if process.poll() is not None:
            raise RuntimeError(f"the proxy exited with status {process.returncode}:\n{log.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait(5)
            raise RuntimeError(f"the proxy did not listen on {pending} within {timeout} s:\n{log.read_text()}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", pending[0])) == 0:
                pending.pop(0)
                continue
        time.sleep(0.05)


def _wait_tls(port: int, ca: Path, log: Path, timeout: float = 20.0) -> None:
    """Wait until a TLS handshake for localhost verifies against ``ca`` (Caddy issues its certificate after start)."""
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while True:
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
                context.wrap_socket(raw, server_hostname="localhost"),
            ):
                return
        except (OSError, ssl.SSLError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no verified TLS handshake on {port} within {timeout} s ({exc}):\n{log.read_text()}"
                ) from exc
            time.sleep(0.1)


def _nginx_main_conf(directory: Path, site: Path) -> str:
    """The main nginx.conf around a shipped site file: everything in ``directory``, in the foreground.

    It switches gzip on for text/event-stream at the http{} level, as a site-wide setting of a real server may:
    the shipped file must turn it off for streams itself.
    """
    user = "user root root;\n" if os.geteuid() == 0 else ""
    return f"""{user}daemon off;
master_process on;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 1024; }}
http {{
    types {{ text/html html; application/javascript js; }}
    default_type application/octet-stream;
    access_log off;  # the site file names its own
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    gzip on;
    gzip_min_length 1;
    gzip_types text/event-stream application/json;
    include {site};
}}
"""


def start_nginx(
    directory: Path,
    layout: str,
    upstream: str,
    tls: TLSFiles,
    site_root: Path,
    edits: Sequence[tuple[str, str]] = (),
    https_port: int | None = None,
) -> Proxy:
    """Start nginx from ``deploy/nginx/<layout>.conf.template`` in front of ``upstream`` (host:port).

    ``https_port`` fixes the HTTPS port (an origin known in advance); a free one is picked otherwise.
    """
    binary = require_binary("nginx")
    directory.mkdir(parents=True, exist_ok=True)
    http_port, https_port = free_port(), https_port or free_port()
    values = {
        "SSEHUB_UPSTREAM": upstream,
        "SERVER_NAME": "localhost",
        "HTTP_LISTEN": f"127.0.0.1:{http_port}",
        "HTTPS_LISTEN": f"127.0.0.1:{https_port}",
        "TLS_CERTIFICATE": str(tls.certificate),
        "TLS_CERTIFICATE_KEY": str(tls.key),
        "ACCESS_LOG": str(directory / "access.log"),
        "SITE_ROOT": str(site_root),
    }
    template = (DEPLOY / "nginx" / f"{layout}.conf.template").read_text()
    site = directory / "site.conf"
    site.write_text(render_nginx(apply_edits(template, edits), values))
    conf = directory / "nginx.conf"
    conf.write_text(_nginx_main_conf(directory, site))
    log = directory / "error.log"
    with log.open("ab") as output:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [binary, "-p", str(directory), "-c", str(conf), "-e", str(log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=output,
        )
    proxy = Proxy(
        "nginx",
        layout,
        f"https://localhost:{https_port}",
        f"http://localhost:{http_port}",
        tls.ca,
        process,
        log,
        directory / "access.log",
        directory,
    )
    try:
        _wait_listening(process, [https_port, http_port], log)
    except BaseException:
        proxy.stop()
        raise
    return proxy


def start_caddy(
    directory: Path,
    layout: str,
    upstream: str,
    site_root: Path,
    edits: Sequence[tuple[str, str]] = (),
) -> Proxy:
    """Start Caddy from ``deploy/caddy/<layout>.Caddyfile`` in front of ``upstream``, with its internal CA."""
    binary = require_binary("caddy")
    directory.mkdir(parents=True, exist_ok=True)
    http_port, https_port = free_port(), free_port()
    config = directory / "Caddyfile"
    config.write_text(apply_edits((DEPLOY / "caddy" / f"{layout}.Caddyfile").read_text(), edits))
    home = directory / "home"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        # Caddy keeps its CA, certificates and autosaved config under these: the test's directory.
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "HTTP_PORT": str(http_port),
        "HTTPS_PORT": str(https_port),
        "CADDY_ADMIN": "off",
        "BIND": "127.0.0.1",
        "CADDY_TLS": "internal",
        "SERVER_NAME": "localhost",
        "SSEHUB_UPSTREAM": upstream,
        "SITE_ROOT": str(site_root),
    }
    log = directory / "caddy.log"
    with log.open("ab") as output:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [binary, "run", "--config", str(config), "--adapter", "caddyfile"],
            env=env,
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    ca = home / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
    proxy = Proxy(
        "caddy",
        layout,
        f"https://localhost:{https_port}",
        f"http://localhost:{http_port}",
        ca,
        process,
        log,
        log,
        directory,
    )
    try:
        _wait_listening(process, [https_port, http_port], log)
        # The internal CA and the site's certificate are made at start; wait until the root is on disk.
        deadline = time.monotonic() + 20
        while not ca.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"Caddy wrote no root certificate at {ca}:\n{proxy.output()}")
            time.sleep(0.05)
        _wait_tls(https_port, ca, log)
    except BaseException:
        proxy.stop()
        raise
    return proxy
