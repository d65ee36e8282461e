"""`ssehub tail` as a real process against a real server: one line per event, resume, errors, Ctrl-C."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

import httpx
import pytest

from ssehub import Hub, create_app
from ssehub.tail import format_event
from ssehub.testing import running_server
from tests.conftest import make_settings


class Tail:
    """A running `ssehub tail` process whose stdout and stderr lines are read by threads (bounded waits)."""

    def __init__(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSEHUB_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ssehub", "tail", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.out: queue.Queue[str] = queue.Queue()
        self.err: list[str] = []
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._threads = [
            threading.Thread(target=self._pump, args=(self.process.stdout, self.out.put), daemon=True),
            threading.Thread(target=self._pump, args=(self.process.stderr, self.err.append), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _pump(stream: IO[str], put: Any) -> None:
        for line in stream:
            put(line.rstrip("\n"))

    def lines(self, count: int, timeout: float = 10.0) -> list[str]:
        """The next ``count`` stdout lines."""
        deadline = time.monotonic() + timeout
        return [self.out.get(timeout=max(0.01, deadline - time.monotonic())) for _ in range(count)]

    def wait_stderr(self, text: str, timeout: float = 10.0) -> None:
        """Wait until a stderr line contains ``text``."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.err):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in stderr: {self.err}")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Send ``sig`` (if it still runs), reap it, read its output to the end; return the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            status = self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise
        finally:
            for thread in self._threads:
                thread.join(5)
            for pipe in (self.process.stdout, self.process.stderr):
                if pipe is not None:
                    pipe.close()
        return status


@pytest.fixture
def api() -> Iterator[str]:
    """A standalone hub whose streams end every 1.5 s (clients must resume), on a free port."""
    hub = Hub(make_settings(connection_timeout=1.5, heartbeat_interval=0.5, retry_ms=100))
    with running_server(create_app(hub=hub)) as base:
        yield base + hub.settings.prefix


def _publish(api: str, channel: str, data: Any) -> str:
    response = httpx.post(f"{api}/publish", json={"channel": channel, "event": "job", "data": data}, timeout=5)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_tail_prints_each_event_once_across_drops_and_exits_on_ctrl_c(api: str) -> None:
    """`ssehub tail --json` prints one JSON line per event, resumes after the server ends its stream with nothing
    missing or repeated, and exits with 130 and no traceback on Ctrl-C."""
    tail = Tail("jobs", "--url", api, "--json")
    try:
        tail.wait_stderr("connected to")
        published = []
        for n in range(25):
            published.append(_publish(api, "jobs", {"n": n}))
            time.sleep(0.1)  # 2.5 s: the server ends the stream at least once meanwhile
        lines = [json.loads(line) for line in tail.lines(25)]
        tail.wait_stderr("reconnecting")
    finally:
        status = tail.stop()
    assert [line["id"] for line in lines] == published
    assert [line["data"] for line in lines] == [{"n": n} for n in range(25)]
    assert {line["channel"] for line in lines} == {"jobs"}
    assert {line["event"] for line in lines} == {"job"}
    assert tail.out.empty()
    assert status == 130
    assert not any("Traceback" in line for line in tail.err)


def test_tail_last_event_id_replays_the_rest(api: str) -> None:
    """`--last-event-id` prints the events after that id, in the plain one-line format."""
    ids = [_publish(api, "jobs", {"n": n}) for n in range(3)]
    tail = Tail("jobs", "other", "--url", api, "--last-event-id", ids[0])
    try:
        lines = tail.lines(2)
    finally:
        tail.stop()
    assert lines == [f'{ids[1]} - job {{"n":1}}', f'{ids[2]} - job {{"n":2}}']


def test_tail_fails_clearly_on_refusal(api: str) -> None:
    """A refused stream (422 for a malformed channel) ends tail with status 1 and the hub's code and message."""
    tail = Tail("not a channel", "--url", api)
    tail.process.wait(15)
    status = tail.stop()
    assert status == 1
    assert any("INVALID_CHANNEL" in line for line in tail.err)
    assert not any("Traceback" in line for line in tail.err)


def test_format_event_plain_and_json() -> None:
    """Plain lines are `<id> <channel> <event> <compact JSON>`; --json lines are one JSON object."""
    assert format_event("1-0", "a", "e", {"x": "é"}, False) == '1-0 a e {"x":"é"}'
    assert format_event("", None, "e", "text", False) == "- - e text"
    assert json.loads(format_event("1-0", None, "e", [1], True)) == {
        "id": "1-0",
        "channel": None,
        "event": "e",
        "data": [1],
    }


def test_tail_without_httpx_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without httpx, `ssehub tail` exits with status 2 and the install command on stderr."""
    from ssehub.cli import main

    monkeypatch.setitem(sys.modules, "httpx", None)
    assert main(["tail", "jobs"]) == 2
    assert "pip install 'ssehub[client]'" in capsys.readouterr().err
