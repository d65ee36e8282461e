"""The ``ssehub`` command: ``ssehub serve`` runs the hub, ``ssehub publish`` sends an event to a running hub."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

from pydantic import ValidationError
from pydantic_settings import SettingsError

from ssehub import tail
from ssehub.auth import startup_problem
from ssehub.redact import validation_error_text
from ssehub.settings import Settings


class _Server:
    """Imports the server lazily so that importing the CLI costs nothing."""

    @staticmethod
    def run(settings: Settings, workers: int) -> int:
        if workers > 1:
            # ssehub's own supervisor: workers get these settings as an argument and end streams gracefully.
            from ssehub._supervisor import Supervisor

            return Supervisor(settings, workers).run()
        from ssehub._server import serve

        serve(settings)
        return 0


def _serve(args: argparse.Namespace) -> int:
    overrides = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"ssehub: invalid settings:\n{validation_error_text(exc)}", file=sys.stderr)
        return 2
    except SettingsError as exc:  # e.g. SSEHUB_API_KEYS that is not JSON (the message names the field only)
        print(f"ssehub: invalid settings: {exc}", file=sys.stderr)
        return 2
    refusal = startup_problem(settings)
    if refusal is not None:
        print(refusal, file=sys.stderr)
        return 2
    if args.workers < 1:
        print("ssehub: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers > 1 and settings.broker_url.startswith("memory://"):
        print(
            "ssehub: --workers > 1 needs a shared broker. With the memory broker every worker would keep its own "
            "history and subscribers, so events published to one worker would never reach clients of another. "
            "Set SSEHUB_BROKER_URL=redis://HOST:PORT (and install ssehub[redis]), or run one worker.",
            file=sys.stderr,
        )
        return 2
    return _Server.run(settings, args.workers)


def _publish(args: argparse.Namespace) -> int:
    try:
        data = json.loads(args.data)
    except ValueError:
        print(f"ssehub: DATA must be JSON, got {args.data!r} (a string needs quotes: '\"text\"')", file=sys.stderr)
        return 2
    url = args.url.rstrip("/") + "/publish"
    body = json.dumps({"channel": args.channel, "event": args.event, "data": data}).encode()
    headers = {"Content-Type": "application/json"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            print(response.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(f"ssehub: {exc.code}: {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"ssehub: cannot reach {url}: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser."""
    parser = argparse.ArgumentParser(prog="ssehub", description="Server-Sent Events hub.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="serve the hub (settings from SSEHUB_* variables and .env)",
        description="Serve the hub. Each setting comes from, first wins: a flag, the environment (SSEHUB_*), "
        "a .env file in the working directory, the default.",
    )
    serve.add_argument("--host", help="address to bind (else SSEHUB_HOST from the environment or .env; 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, help="port to listen on (else SSEHUB_PORT from the environment or .env; 8000)"
    )
    serve.add_argument("--workers", type=int, default=1, help="worker processes (needs the Redis broker if > 1)")
    serve.set_defaults(func=_serve)

    publish = commands.add_parser("publish", help="publish an event to a running hub")
    publish.add_argument("channel", help="channel, e.g. download:updates")
    publish.add_argument("event", help="event type, e.g. download_progress")
    publish.add_argument("data", help='JSON data, e.g. \'{"download_id": 42, "progress": 50}\'')
    publish.add_argument("--url", default="http://127.0.0.1:8000/api/v1/events", help="the hub's API prefix URL")
    publish.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the hub")
    publish.add_argument("--token", help="API key or JWT with publish rights (sent as Authorization: Bearer)")
    publish.set_defaults(func=_publish)

    tail.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
