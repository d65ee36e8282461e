"""Logs of ``ssehub serve``: text or JSON lines (``SSEHUB_LOG_FORMAT``), one line per stream opened and closed.

What a line may carry is decided here, field by field: the stream lines carry the connection id, channels,
client address, duration, events and bytes written and the close reason, and nothing read from request headers
or the query string, so a token, cookie or ``Authorization`` value can never reach a log. uvicorn's access
log goes through :class:`AccessFilter`, which redacts a ``token`` in the query string
(:func:`ssehub.redact.redact`) and keeps method, path, status and client; every handler also carries
:class:`ssehub.redact.RedactTokenFilter`, for any other line that might quote a URL.

:func:`logging_config` is the ``logging.config.dictConfig`` that ``ssehub serve`` hands to uvicorn (so every
worker process applies it) and applies in the worker supervisor.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Sequence
from typing import Any

from ssehub.redact import RedactTokenFilter, redact
from ssehub.settings import Settings

#: The logger of the per-stream lines; silence them alone with ``logging.getLogger("ssehub.streams")``.
streams_logger = logging.getLogger("ssehub.streams")

#: The attribute of a log record that carries its structured fields.
FIELDS = "ssehub_fields"


def _client(client: Any) -> str | None:
    """``host:port`` of an ASGI ``scope["client"]`` pair (None when the server gave none)."""
    if isinstance(client, tuple | list) and len(client) == 2:
        return f"{client[0]}:{client[1]}"
    return None


def log_stream_opened(connection_id: str, channels: Sequence[str], client: Any, mode: str) -> None:
    """One line for a stream that has started. ``mode``: ``new``, ``resumed`` or ``reset``."""
    if streams_logger.isEnabledFor(logging.INFO):
        fields = {
            "event": "stream_opened",
            "connection_id": connection_id,
            "channels": list(channels),
            "client": _client(client),
            "mode": mode,
        }
        streams_logger.info("stream opened", extra={FIELDS: fields})


def log_stream_closed(
    connection_id: str,
    channels: Sequence[str],
    client: Any,
    reason: str,
    duration: float,
    events: int,
    sent_bytes: int,
) -> None:
    """One line for a stream that has ended: how long it lived, what it wrote and why it ended."""
    if streams_logger.isEnabledFor(logging.INFO):
        fields = {
            "event": "stream_closed",
            "connection_id": connection_id,
            "channels": list(channels),
            "client": _client(client),
            "reason": reason,
            "duration": round(duration, 3),
            "events_sent": events,
            "bytes_sent": sent_bytes,
        }
        streams_logger.info("stream closed", extra={FIELDS: fields})


class AccessFilter(logging.Filter):
    """Rewrites uvicorn's access records: the path with any query-string token redacted, and explicit fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            client, method, full_path, http_version, status = args
            path = redact(str(full_path))
            record.args = (client, method, path, http_version, status)
            fields = {"event": "http_request", "client": client, "method": method, "path": path, "status": status}
            setattr(record, FIELDS, fields)
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, FIELDS, None)
    return fields if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the record's explicit fields only."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` (the stream lines' fields as ``key=value``)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        if fields and record.name == streams_logger.name:
            pairs = (f"{key}={_text(value)}" for key, value in fields.items() if key != "event")
            text = f"{text} {' '.join(pairs)}"
        return text


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    return "-" if value is None else str(value)


def logging_config(settings: Settings) -> dict[str, Any]:
    """The ``dictConfig`` of ``ssehub serve``: ssehub's and uvicorn's loggers, in ``settings.log_format``."""
    formatter = JsonFormatter if settings.log_format == "json" else TextFormatter
    level = settings.log_level.upper()
    handler = {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "filters": {
            "access": {"()": f"{AccessFilter.__module__}.{AccessFilter.__qualname__}"},
            "redact": {"()": f"{RedactTokenFilter.__module__}.{RedactTokenFilter.__qualname__}"},
        },
        "handlers": {
            "default": {**handler, "filters": ["redact"]},
            "access": {**handler, "filters": ["access", "redact"]},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["access"], "level": level, "propagate": False},
            "ssehub": {"handlers": ["default"], "level": level, "propagate": False},
        },
    }
