"""Keep credentials out of logs: uvicorn's access log shows request paths with their query strings, and a
browser's EventSource sends its token as ``?token=...``. :class:`RedactTokenFilter` rewrites such values to
``[redacted]`` before a record is formatted. ``ssehub serve`` puts it on every handler of its logging
configuration (``ssehub/logs.py``, workers included); :func:`uvicorn_log_config` is uvicorn's default
configuration with the filter, for applications that run ssehub under their own uvicorn.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

#: ``token=...`` in a query string (also ``access_token``, a common name), up to the next ``&``, space or quote.
_TOKEN_IN_QUERY = re.compile(r"([?&](?:access_)?token=)[^&\s\"']*", re.IGNORECASE)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` with every query-string token value replaced by ``[redacted]``."""
    if "token=" not in text.lower():
        return text
    return _TOKEN_IN_QUERY.sub(r"\1" + REDACTED, text)


class RedactTokenFilter(logging.Filter):
    """A logging filter that redacts query-string tokens in a record's message and string arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in args)
        elif isinstance(args, dict):
            record.args = {key: redact(value) if isinstance(value, str) else value for key, value in args.items()}
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's default logging configuration with :class:`RedactTokenFilter` on each handler."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["ssehub_redact"] = {"()": f"{__name__}.RedactTokenFilter"}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("ssehub_redact")
    return config


def validation_error_text(exc: ValidationError) -> str:
    """A settings error as lines of ``SSEHUB_NAME (location): message``, without the values given.

    pydantic's own text repeats each bad input, which would print an API key or a JWT secret to the terminal
    and the service's log.
    """
    lines = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = ".".join(str(part) for part in error["loc"])
        name = f"SSEHUB_{str(error['loc'][0]).upper()} ({loc})" if error["loc"] else "settings"
        lines.append(f"  {name}: {error['msg']}")
    return "\n".join(lines)


__all__ = ["REDACTED", "RedactTokenFilter", "redact", "uvicorn_log_config", "validation_error_text"]
