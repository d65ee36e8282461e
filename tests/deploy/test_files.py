"""The deploy/ files agree with ssehub: the example environment, the systemd unit, the proxies' timeouts."""

from __future__ import annotations

import configparser
import inspect
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from ssehub.settings import Settings
from ssehub.testing import free_port
from tests.deploy.proxies import DEPLOY, LAYOUTS, NGINX_PLACEHOLDERS, require_binary

pytestmark = [pytest.mark.proxy]

ENV_EXAMPLE = DEPLOY / "ssehub.env.example"
UNIT = DEPLOY / "systemd" / "ssehub.service"
DOCS = DEPLOY.parent / "docs" / "deployment.md"


def read_environment_file(path: Path) -> dict[str, str]:
    """Read NAME=value lines as systemd's EnvironmentFile does for the simple syntax (no quotes, no export)."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"{path.name}:{number}: not NAME=value: {line!r}"
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", name), f"{path.name}:{number}: bad name {name!r}"
        # systemd keeps an inline '#' as part of the value, python-dotenv strips it: keep comments on their own lines.
        assert "#" not in value, f"{path.name}:{number}: an inline comment: {line!r}"
        assert not value.startswith(("'", '"')), f"{path.name}:{number}: quotes: {line!r}"
        values[name] = value
    return values


def test_env_example_names_real_settings_with_valid_values() -> None:
    """Every variable of the example environment file is an ssehub setting, and together they validate."""
    values = read_environment_file(ENV_EXAMPLE)
    fields = {f"SSEHUB_{name.upper()}" for name in Settings.model_fields}
    assert set(values) <= fields, sorted(set(values) - fields)
    settings = Settings(_env_file=ENV_EXAMPLE)
    assert settings.host == values["SSEHUB_HOST"]
    assert settings.port == int(values["SSEHUB_PORT"])


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, inline_comment_prefixes=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_systemd_unit_with_example_environment_serves(tmp_path: Path) -> None:
    """The unit's ExecStart with the example EnvironmentFile (its port changed to a free one) serves the hub."""
    unit = _unit()
    service = unit["Service"]
    assert service["EnvironmentFile"] == "/etc/ssehub/ssehub.env"
    assert "/etc/ssehub/ssehub.env" in ENV_EXAMPLE.read_text()
    command = shlex.split(service["ExecStart"])
    assert Path(command[0]).name == "ssehub"
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SSEHUB_")}
    environment.update(read_environment_file(ENV_EXAMPLE))
    environment["SSEHUB_PORT"] = str(port)
    # The installed entry point is `ssehub`; here the same CLI runs from this checkout.
    process = subprocess.Popen(
        [sys.executable, "-m", "ssehub", *command[1:]],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}{environment['SSEHUB_PREFIX']}/health", timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read().decode() if process.stdout else ""
                    pytest.fail(f"ssehub serve did not start with the example environment:\n{output}")
                time.sleep(0.05)
        assert health.status_code == 200
        assert health.json()["heartbeat_interval"] == float(environment["SSEHUB_HEARTBEAT_INTERVAL"])
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if process.stdout:
            process.stdout.close()


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    assert match, value
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[match.group(2)]
    return int(match.group(1)) * scale


def test_proxy_read_timeouts_exceed_the_heartbeat() -> None:
    """Every shipped proxy file waits for upstream data longer than the default and the example heartbeat."""
    heartbeats = [
        float(Settings.model_fields["heartbeat_interval"].default),
        float(read_environment_file(ENV_EXAMPLE)["SSEHUB_HEARTBEAT_INTERVAL"]),
    ]
    found = {}
    for layout in LAYOUTS:
        nginx = (DEPLOY / "nginx" / f"{layout}.conf.template").read_text()
        found[f"nginx {layout}"] = re.findall(r"^\s*proxy_read_timeout\s+(\S+);", nginx, re.MULTILINE)
        caddy = (DEPLOY / "caddy" / f"{layout}.Caddyfile").read_text()
        found[f"caddy {layout}"] = re.findall(r"^\s*read_timeout\s+(\S+)", caddy, re.MULTILINE)
    for where, values in found.items():
        assert len(values) == 1, where
        assert _seconds(values[0]) >= 2 * max(heartbeats), (where, values)


def test_nginx_placeholders_are_the_documented_ones() -> None:
    """The nginx templates use only the placeholders the tests fill in and docs/deployment.md lists."""
    docs = DOCS.read_text()
    for layout in LAYOUTS:
        used = set(
            re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", (DEPLOY / "nginx" / f"{layout}.conf.template").read_text())
        )
        assert used <= set(NGINX_PLACEHOLDERS), sorted(used - set(NGINX_PLACEHOLDERS))
        for name in used:
            assert f"`{name}`" in docs, f"docs/deployment.md does not explain {name}"


def test_caddyfiles_are_in_caddy_fmt_form() -> None:
    """The Caddyfiles are as `caddy fmt` writes them (Caddy warns at every start otherwise)."""
    caddy = require_binary("caddy")
    for layout in LAYOUTS:
        path = DEPLOY / "caddy" / f"{layout}.Caddyfile"
        formatted = subprocess.run([caddy, "fmt", str(path)], capture_output=True, text=True, timeout=30, check=True)
        assert formatted.stdout == path.read_text(), f"run: caddy fmt --overwrite {path}"


def test_idle_upstream_connections_close_first() -> None:
    """The proxies drop idle upstream connections before uvicorn does, and (Caddy) before its read timeout fires."""
    uvicorn_keep_alive = inspect.signature(uvicorn.Config).parameters["timeout_keep_alive"].default
    for layout in LAYOUTS:
        nginx = (DEPLOY / "nginx" / f"{layout}.conf.template").read_text()
        (nginx_idle,) = re.findall(r"^\s*keepalive_timeout\s+(\S+);", nginx, re.MULTILINE)
        assert _seconds(nginx_idle) < uvicorn_keep_alive, layout
        caddy = (DEPLOY / "caddy" / f"{layout}.Caddyfile").read_text()
        (caddy_idle,) = re.findall(r"^\s*keepalive\s+(\S+)", caddy, re.MULTILINE)
        (caddy_read,) = re.findall(r"^\s*read_timeout\s+(\S+)", caddy, re.MULTILINE)
        # A request put on a pooled connection whose read deadline runs out at that moment fails with a 504.
        assert _seconds(caddy_idle) < min(uvicorn_keep_alive, _seconds(caddy_read)), layout
