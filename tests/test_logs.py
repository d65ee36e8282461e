"""Structured logs of `ssehub serve`: a JSON line per stream opened and closed, and no secret in any line."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx

from ssehub.logs import TextFormatter, log_stream_closed, streams_logger
from tests.serve_process import serve_process

SECRETS = ("sekrit-AUTH-1234", "sekrit-COOKIE-5678", "sekrit-QUERY-9012")


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` parsed as JSON (any line that is not JSON fails the test)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_log_lines_for_streams_carry_fields_and_no_secrets(tmp_path: Path) -> None:
    """With SSEHUB_LOG_FORMAT=json every line is JSON; a stream gets an opened and a closed line with its id,
    channels, client address, duration, events sent and close reason; no header or query secret appears."""
    with serve_process(tmp_path, SSEHUB_LOG_FORMAT="json") as served:
        headers = {"Authorization": f"Bearer {SECRETS[0]}", "Cookie": f"session={SECRETS[1]}"}
        url = f"{served.api}/stream?channels=jobs:1,jobs:2&token={SECRETS[2]}"
        with httpx.Client(timeout=5) as client, client.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200
            first = next(response.iter_raw())
            connected = json.loads(first.split(b"data: ", 1)[1].split(b"\n", 1)[0])
        deadline = time.monotonic() + 10
        while '"stream_closed"' not in served.log():
            assert time.monotonic() < deadline, served.log()
            time.sleep(0.05)
        served.terminate(15)
        log = served.log()
    lines = _json_lines(log)
    opened = [line for line in lines if line.get("event") == "stream_opened"]
    closed = [line for line in lines if line.get("event") == "stream_closed"]
    assert len(opened) == len(closed) == 1
    assert opened[0]["connection_id"] == closed[0]["connection_id"] == connected["connection_id"]
    assert opened[0]["channels"] == closed[0]["channels"] == ["jobs:1", "jobs:2"]
    assert opened[0]["client"].startswith("127.0.0.1:")
    assert opened[0]["mode"] == "new"
    assert opened[0]["level"] == "info"
    assert closed[0]["reason"] == "client"
    assert closed[0]["duration"] >= 0
    assert closed[0]["events_sent"] >= 1  # the connected event
    assert closed[0]["bytes_sent"] >= len(first)
    access = [line for line in lines if line.get("event") == "http_request" and "/stream" in line["path"]]
    assert access
    assert access[0]["path"] == "/api/v1/events/stream?channels=jobs:1,jobs:2&token=[redacted]"
    for secret in SECRETS:
        assert secret not in log


def test_text_stream_lines_are_key_value_pairs() -> None:
    """In text format a stream line is the message followed by its fields as key=value."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    previous = streams_logger.level
    streams_logger.addHandler(handler)
    streams_logger.setLevel(logging.INFO)
    try:
        log_stream_closed("abc123", ["jobs:1", "jobs:2"], ("10.0.0.7", 5123), "timeout", 300.01234, 42, 4096)
    finally:
        streams_logger.removeHandler(handler)
        streams_logger.setLevel(previous)
    text = TextFormatter().format(records[0])
    assert text.endswith(
        "stream closed connection_id=abc123 channels=jobs:1,jobs:2 client=10.0.0.7:5123 reason=timeout "
        "duration=300.012 events_sent=42 bytes_sent=4096"
    )
