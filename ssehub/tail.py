"""``ssehub tail CHANNEL...``: print a hub's events, one line each, resuming across drops.

Events go to stdout (``<id> <channel> <event> <data>``, or one JSON object per line with ``--json``); connection
changes go to stderr. Ctrl-C exits cleanly (status 130). Needs ``ssehub[client]`` (httpx).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
from types import FrameType
from typing import TextIO

from ssehub.exceptions import MissingDependencyError

DEFAULT_URL = "http://127.0.0.1:8000/api/v1/events"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``tail`` subcommand to the CLI's subparsers."""
    tail = commands.add_parser("tail", help="print events of channels as they arrive (resumes across drops)")
    tail.add_argument("channels", nargs="+", metavar="CHANNEL", help="channel(s), e.g. download:updates")
    tail.add_argument("--url", default=DEFAULT_URL, help=f"the hub's API prefix URL (default {DEFAULT_URL})")
    tail.add_argument("--token", help="credential, sent as 'Authorization: Bearer TOKEN'")
    tail.add_argument("--json", action="store_true", help="one JSON object per line: id, channel, event, data")
    tail.add_argument("--last-event-id", help="start after this id (replays what came after it)")
    tail.add_argument("--heartbeats", action="store_true", help="also print connected and heartbeat events")
    tail.add_argument("--max-retry-delay", type=float, default=30.0, help="longest wait between attempts, seconds")
    tail.set_defaults(func=run)


def format_event(event_id: str, channel: str | None, event: str, data: object, as_json: bool) -> str:
    """One output line for an event."""
    if as_json:
        return json.dumps(
            {"id": event_id, "channel": channel, "event": event, "data": data},
            ensure_ascii=False,
            separators=(",", ":"),
        )
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"{event_id or '-'} {channel or '-'} {event} {text}"


async def _tail(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from ssehub.client import ConnectionState, ReconnectLimitError, SubscribeError, subscribe

    def on_state(change: ConnectionState) -> None:
        if change.state == "open":
            resumed = f" (resuming after {change.last_event_id})" if change.last_event_id else ""
            print(f"ssehub tail: connected to {url}{resumed}", file=err, flush=True)
        elif change.state == "reconnecting":
            print(
                f"ssehub tail: {change.error}; reconnecting in {change.delay:.1f}s (attempt {change.attempt})",
                file=err,
                flush=True,
            )

    url = args.url.rstrip("/") + "/stream"
    channel = args.channels[0] if len(args.channels) == 1 else None
    subscriber = subscribe(
        url,
        channels=args.channels,
        token=args.token,
        last_event_id=args.last_event_id,
        include_control=args.heartbeats,
        max_retry_delay=args.max_retry_delay,
        on_state=on_state,
    )
    try:
        async with subscriber:
            async for event in subscriber:
                if event.event == "reset":
                    print("ssehub tail: reset: history no longer reaches back; events were lost", file=err, flush=True)
                print(format_event(event.id, channel, event.event, event.data, args.json), file=out, flush=True)
    except SubscribeError as exc:
        print(f"ssehub tail: {exc}", file=err)
        return 1
    except ReconnectLimitError as exc:
        print(f"ssehub tail: {exc}", file=err)
        return 1
    return 0


#: Seconds Ctrl-C waits for the stream's connection to close before the process exits regardless.
_INTERRUPT_GRACE = 3.0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C: raise KeyboardInterrupt (asyncio.run then cancels the stream and closes its connection), and make
    sure the process ends even if that cleanup hangs. A terminal program must always stop on Ctrl-C; once, in a
    loaded full test run, tail did not exit within 10 s of Ctrl-C (the cause was not found), hence this bound."""
    timer = threading.Timer(_INTERRUPT_GRACE, os._exit, (130,))
    timer.daemon = True
    timer.start()
    signal.default_int_handler(signum, frame)


def run(args: argparse.Namespace) -> int:
    """Run ``ssehub tail``; returns the exit status (130 after Ctrl-C)."""
    from ssehub.client import require_httpx

    try:
        require_httpx()
    except MissingDependencyError as exc:
        print(f"ssehub: {exc}", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGINT, _interrupt)
    try:
        return asyncio.run(_tail(args, sys.stdout, sys.stderr))
    except KeyboardInterrupt:
        # asyncio.run cancelled the stream's task (closing its connection) before re-raising: nothing left.
        return 130
    except BrokenPipeError:
        # `ssehub tail ... | head`: the reader left. Point stdout at nothing so the interpreter's final flush
        # does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    finally:
        signal.signal(signal.SIGINT, previous)
