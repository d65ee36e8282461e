"""`ssehub serve` and credentials: tokens never reach the logs, an open hub warns and will not bind publicly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ssehub.testing import free_port
from tests.auth_helpers import KEY_PUBLISH, KEY_SUBSCRIBE, SECRET, api_keys_setting, token

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSEHUB_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def _serve(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Start `python -m ssehub serve` on a free port with its output in a file; wait until it answers."""
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ssehub", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=_env(**env),
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    api = f"http://127.0.0.1:{port}/api/v1/events"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(f"{api}/health", timeout=1)
            break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            raise AssertionError(f"ssehub serve did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return process, api, log


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _open_stream(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> int:
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 200:
            assert b"event: connected" in next(response.iter_raw())
        return response.status_code


def test_tokens_never_reach_the_logs(tmp_path: Path) -> None:
    """With the access log on, no API key, JWT or cookie value appears in the server's output; ?token= is redacted."""
    bad_key = "not-a-key-but-secret-looking-123"
    jwt_text = token(sub="alice", subscribe=["download:*"])
    expired = token(sub="alice", exp_in=-600)
    keys = api_keys_setting(
        {"key": KEY_SUBSCRIBE, "scopes": ["subscribe"], "channels": ["download:*"]},
        {"key": KEY_PUBLISH, "scopes": ["publish"], "channels": ["download:*"]},
    )
    process, api, log = _serve(
        tmp_path,
        SSEHUB_LOG_LEVEL="debug",
        SSEHUB_API_KEYS=keys,
        SSEHUB_JWT_SECRET=SECRET,
        SSEHUB_AUTH_COOKIE="sse_auth",
    )
    try:
        with httpx.Client(timeout=5) as client:
            stream = f"{api}/stream?channels=download:updates"
            assert _open_stream(client, f"{stream}&token={KEY_SUBSCRIBE}") == 200
            assert _open_stream(client, f"{stream}&token={jwt_text}") == 200
            assert _open_stream(client, f"{stream}&token={bad_key}") == 401
            assert _open_stream(client, f"{stream}&token={expired}") == 401
            assert _open_stream(client, f"{stream}&token={jwt_text}&_=1&lastEventId=x") == 200
            assert _open_stream(client, stream, {"Authorization": f"Bearer {jwt_text}"}) == 200
            assert _open_stream(client, stream, {"Cookie": f"sse_auth={KEY_SUBSCRIBE}"}) == 200
            assert _open_stream(client, f"{api}/stream?channels=queue:updates&token={KEY_SUBSCRIBE}") == 403
            published = client.post(
                f"{api}/publish",
                json={"channel": "download:updates", "event": "e", "data": 1},
                headers={"X-API-Key": KEY_PUBLISH},
            )
            assert published.status_code == 201
            command = [sys.executable, "-m", "ssehub", "publish", "download:updates", "e", "1", "--url", api]
            run = {"capture_output": True, "text": True, "timeout": 20, "env": _env()}
            with_token = subprocess.run([*command, "--token", KEY_PUBLISH], **run)  # type: ignore[call-overload]
            assert with_token.returncode == 0, with_token.stderr
            without = subprocess.run(command, **run)  # type: ignore[call-overload]
            assert without.returncode == 1
            assert "UNAUTHORIZED" in without.stderr
    finally:
        _stop(process)
    output = log.read_text()
    assert "GET /api/v1/events/stream?channels=download:updates&token=[redacted]" in output  # the access log ran
    for secret in (KEY_SUBSCRIBE, KEY_PUBLISH, bad_key, jwt_text, expired, SECRET, jwt_text.split(".")[2]):
        assert secret not in output


def test_open_hub_warns_at_start(tmp_path: Path) -> None:
    """With no credentials configured, ssehub serve starts on loopback and says loudly that it runs open."""
    process, _api, log = _serve(tmp_path)
    _stop(process)
    assert "runs OPEN" in log.read_text()


def test_settings_errors_do_not_print_secrets() -> None:
    """A refused API key or JWT secret is named in the error, but its value is not printed."""
    for env in (
        {"SSEHUB_API_KEYS": '[{"key": "tiny-secret-key", "scopes": ["admin"]}]'},
        {"SSEHUB_JWT_SECRET": "tiny-secret-key"},
        {"SSEHUB_API_KEYS": '[{"key": "tiny-secret-key", oops'},
    ):
        result = subprocess.run(
            [sys.executable, "-m", "ssehub", "serve", "--port", str(free_port())],
            capture_output=True,
            text=True,
            timeout=20,
            env=_env(**env),
        )
        assert result.returncode == 2, env
        assert "invalid settings" in result.stderr
        assert "tiny-secret-key" not in result.stderr + result.stdout


def test_unusable_public_key_file_is_reported(tmp_path: Path) -> None:
    """A JWT public key file that holds no PEM key stops ssehub serve with exit status 2 and a clear message."""
    bad = tmp_path / "key.pem"
    bad.write_text("not a key")
    result = subprocess.run(
        [sys.executable, "-m", "ssehub", "serve", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=20,
        env=_env(SSEHUB_JWT_PUBLIC_KEY_FILE=str(bad)),
    )
    assert result.returncode == 2
    assert "does not hold a PEM public key" in result.stderr
    assert "Traceback" not in result.stderr


def test_open_hub_refuses_a_public_address() -> None:
    """Open and bound to a non-loopback address: ssehub serve exits 2 naming the setting that allows it."""
    for host in ("0.0.0.0", "::", "example.com"):
        result = subprocess.run(
            [sys.executable, "-m", "ssehub", "serve", "--host", host, "--port", str(free_port())],
            capture_output=True,
            text=True,
            timeout=20,
            env=_env(),
        )
        assert result.returncode == 2, host
        assert "SSEHUB_ALLOW_OPEN=true" in result.stderr
        assert "without authentication" in result.stderr
