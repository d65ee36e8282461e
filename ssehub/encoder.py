"""The one SSE encoder: every byte ssehub writes to a stream comes from :func:`encode`.

It follows the WHATWG rules (see ``docs/architecture.md``): UTF-8, LF line ends, ``field: value`` with one
space, multi-line data split on CR, LF and CRLF into several ``data:`` lines, an empty payload still sent as
``data:``, and a blank line ending each event. Values that would forge fields (CR, LF or NUL in an id or
event type) are refused rather than stripped, so a bug upstream shows up as an error instead of a silent
change of what the client sees.
"""

from __future__ import annotations

import re

from ssehub.exceptions import InvalidValueError

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FORBIDDEN_IN_FIELD = re.compile(r"[\r\n\x00]")


def _check_field(name: str, value: str) -> str:
    if _FORBIDDEN_IN_FIELD.search(value):
        raise InvalidValueError(f"SSE {name} must not contain CR, LF or NUL: {value[:60]!r}")
    return value


def encode(
    data: str | None = None,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
    comment: str | None = None,
) -> bytes:
    """Encode one SSE block.

    Args:
        data: the payload; split on CR, LF and CRLF into one ``data:`` line each. ``None`` sends no data
            field (a block without data is not dispatched by clients: use it for ``retry`` and comments).
        event: the event type (one line).
        id: the event id (no CR, LF or NUL; an empty string resets the client's last id, per the spec).
        retry: the reconnection time in milliseconds (a non-negative integer).
        comment: a comment (keepalive); several lines become several comment lines.

    Returns:
        The UTF-8 bytes of the block, ending with a blank line.

    Raises:
        InvalidValueError: a value would forge a field or is out of range.
    """
    lines: list[str] = []
    if comment is not None:
        lines.extend(":" if not part else ": " + part for part in _LINE_BREAK.split(comment))
    if retry is not None:
        if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
            raise InvalidValueError(f"SSE retry must be a non-negative integer of milliseconds, got {retry!r}")
        lines.append(f"retry: {retry}")
    if id is not None:
        lines.append("id: " + _check_field("id", id) if id else "id")
    if event is not None:
        lines.append("event: " + _check_field("event type", event))
    if data is not None:
        if "\r" in data or "\n" in data:
            lines.extend("data: " + part for part in _LINE_BREAK.split(data))
        else:
            lines.append("data: " + data)
    if not lines:
        raise InvalidValueError("an SSE block needs at least one of data, event, id, retry or comment")
    lines.append("\n")
    return "\n".join(lines).encode("utf-8")
