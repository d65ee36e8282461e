"""Settings: environment variables, validation, and the README's table kept true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from ssehub.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """SSEHUB_* variables set every field, lists as comma-separated values."""
    monkeypatch.setenv("SSEHUB_MAX_CONNECTIONS", "7")
    monkeypatch.setenv("SSEHUB_ENABLE_SSE", "false")
    monkeypatch.setenv("SSEHUB_CHANNELS", "download:*, queue:updates")
    monkeypatch.setenv("SSEHUB_PREFIX", "/events/")
    settings = Settings(_env_file=None)
    assert settings.max_connections == 7
    assert settings.enable_sse is False
    assert settings.channels == ["download:*", "queue:updates"]
    assert settings.prefix == "/events"


def test_env_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .env file in the working directory is read."""
    (tmp_path / ".env").write_text("SSEHUB_HEARTBEAT_INTERVAL=12.5\n")
    monkeypatch.chdir(tmp_path)
    assert Settings().heartbeat_interval == 12.5


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_connections": 0}, "max_connections"),
        ({"heartbeat_interval": 10, "connection_timeout": 5}, "heartbeat_interval must be shorter"),
        ({"broker_url": "kafka://x"}, "broker_url"),
        ({"default_channels": "bad channel"}, "invalid channel name"),
        ({"prefix": "api"}, "prefix must start with '/'"),
    ],
)
def test_invalid_settings_fail_when_built(values: dict[str, object], message: str) -> None:
    """Bad configuration fails when the settings are built, with a message naming the problem."""
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_readme_table_matches_settings() -> None:
    """Every setting is in the README's table with its true default, and the table lists nothing else."""
    rows = re.findall(r"^\| `SSEHUB_([A-Z_]+)` \| `([^`]*)` \|", README.read_text(), re.MULTILINE)
    documented = {name.lower(): default for name, default in rows}
    actual = {}
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(default)
        elif isinstance(default, bool):
            default = str(default).lower()
        actual[name] = str(default)
    assert documented == actual
