"""Where a setting comes from: flag, environment, .env, default (first wins), in `ssehub serve` and `make run`."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ssehub.settings import Settings
from ssehub.testing import free_port

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    """The test process's environment without any SSEHUB_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSEHUB_")}
    env.update(extra)
    return env


def test_order_in_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An argument beats the environment, which beats .env, which beats the default."""
    for name in [name for name in os.environ if name.startswith("SSEHUB_")]:
        monkeypatch.delenv(name)
    (tmp_path / ".env").write_text("SSEHUB_PORT=7001\nSSEHUB_HOST=10.0.0.1\nSSEHUB_RETRY_MS=1234\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSEHUB_PORT", "7002")
    monkeypatch.setenv("SSEHUB_HOST", "10.0.0.2")

    assert Settings(port=7003).port == 7003  # argument (the --port flag) over environment and .env
    settings = Settings()
    assert settings.port == 7002  # environment over .env
    assert settings.host == "10.0.0.2"
    assert settings.retry_ms == 1234  # .env over the default
    assert settings.heartbeat_interval == 30.0  # the default when nothing names it


class _Served:
    """A `ssehub serve` process started in a given directory with a given environment."""

    def __init__(self, cwd: Path, env: dict[str, str], flags: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ssehub", "serve", *flags],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def wait_listening(self, ports: list[int], timeout: float = 15.0) -> int:
        """The one port among ``ports`` whose /health answers, once the server is up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self.process.stdout.read().decode() if self.process.stdout else ""
                pytest.fail(f"ssehub serve exited:\n{output}")
            for port in ports:
                try:
                    response = httpx.get(f"http://127.0.0.1:{port}/api/v1/events/health", timeout=1)
                except httpx.TransportError:
                    continue
                if response.status_code == 200:
                    return port
            time.sleep(0.05)
        pytest.fail(f"ssehub serve answered on none of {ports}")

    def stop(self) -> None:
        """Stop the process (by its PID) and close its output."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout:
            self.process.stdout.close()


@pytest.mark.parametrize(
    ("sources", "winner"),
    [
        pytest.param(("flag", "env", "dotenv"), "flag", id="flag-wins"),
        pytest.param(("env", "dotenv"), "env", id="env-over-dotenv"),
        pytest.param(("dotenv",), "dotenv", id="dotenv-alone"),
    ],
)
def test_serve_listens_where_the_first_source_says(tmp_path: Path, sources: tuple[str, ...], winner: str) -> None:
    """`ssehub serve` listens on the port from the flag, else SSEHUB_PORT in the environment, else in .env."""
    ports = {source: free_port() for source in ("flag", "env", "dotenv")}
    env = _env()
    flags: list[str] = []
    if "dotenv" in sources:
        (tmp_path / ".env").write_text(f"SSEHUB_PORT={ports['dotenv']}\n")
    if "env" in sources:
        env["SSEHUB_PORT"] = str(ports["env"])
    if "flag" in sources:
        flags = ["--port", str(ports["flag"])]
    served = _Served(tmp_path, env, flags)
    try:
        assert served.wait_listening(list(ports.values())) == ports[winner]
    finally:
        served.stop()


def _make_run_command(*make_args: str, **env: str) -> list[str]:
    """The `ssehub serve` command line `make run` would execute (``make -n`` prints it, runs nothing)."""
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", "run", *make_args],
        cwd=ROOT,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    # The recipe spans two lines joined by a backslash; make -n prints it as written.
    text = result.stdout.replace("\\\n", " ")
    lines = [line for line in text.splitlines() if "ssehub serve" in line]
    assert len(lines) == 1, result.stdout
    words = shlex.split(lines[0])
    return words[words.index("serve") + 1 :]


def test_make_run_passes_only_the_host_and_port_it_was_given() -> None:
    """`make run` adds --host/--port only for HOST=/PORT= on its command line, never from its defaults or the shell."""
    assert _make_run_command(SSEHUB_HOST="0.0.0.0", SSEHUB_PORT="9100") == []
    # A HOST or PORT exported by the shell (PaaS platforms export PORT) is not a make argument.
    assert _make_run_command(HOST="10.1.1.1", PORT="9200") == []
    assert _make_run_command("PORT=9300") == ["--port", "9300"]
    assert _make_run_command("HOST=0.0.0.0", "PORT=9400") == ["--host", "0.0.0.0", "--port", "9400"]
