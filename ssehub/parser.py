"""The client side of the SSE wire format: one incremental parser, shared by the Python client and the tests.

Written from the WHATWG HTML standard ("Interpreting an event stream"), independently of ssehub's encoder, so a
test can check what a browser would see and the Python client sees exactly that too. ``ssehub.testing``
re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SSEMessage", "SSEParser", "parse_sse"]


@dataclass(frozen=True, slots=True)
class SSEMessage:
    """One dispatched event as a client sees it. ``id`` is the client's last event id after this event."""

    event: str
    data: str
    id: str
    retry: int | None = None


class SSEParser:
    """Incremental, spec-following SSE parser (WHATWG HTML, "Interpreting an event stream").

    Feed it bytes in chunks of any size; it handles CR, LF and CRLF line ends (also split across chunks), a
    leading BOM, comments, ``retry`` with digits only and ids with NUL ignored.

    Attributes:
        last_event_id: the last event id so far (what a client sends back as ``Last-Event-ID``).
        reconnection_time: the last valid ``retry:`` value in milliseconds, or ``None``. It counts as soon as
            its line is read, whether or not an event is dispatched after it (as in browsers).
        comments: the comment lines read so far, without the colon (tests look at them); ``None`` when built
            with ``keep_comments=False`` (a long-running client must not grow a list per keepalive).
    """

    def __init__(self, *, keep_comments: bool = True) -> None:
        self._decoder_buffer = b""
        self._text = ""
        self._started = False
        self._pending_cr = False
        self._data: list[str] = []
        self._event = ""
        self._last_id = ""
        self._retry: int | None = None
        self.reconnection_time: int | None = None
        self.comments: list[str] | None = [] if keep_comments else None

    @property
    def last_event_id(self) -> str:
        """The client's last event id so far (empty until an ``id:`` line set one)."""
        return self._last_id

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        """Parse ``chunk``; return the events it completed."""
        raw = self._decoder_buffer + chunk
        # Keep an incomplete UTF-8 sequence for the next chunk.
        cut = len(raw)
        for back in range(1, min(4, len(raw)) + 1):
            byte = raw[-back]
            if byte & 0xC0 == 0x80:
                continue
            if byte >= 0xC0:
                needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
                if back < needed:
                    cut = len(raw) - back
            break
        self._decoder_buffer = raw[cut:]
        text = raw[:cut].decode("utf-8", errors="replace")
        if not self._started and text:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        out: list[SSEMessage] = []
        buffer = self._text + text
        start = 0
        i = 0
        while i < len(buffer):
            ch = buffer[i]
            if ch == "\n" and self._pending_cr:
                # The LF of a CRLF whose CR ended the previous line.
                self._pending_cr = False
                start = i + 1
            elif ch in "\r\n":
                self._pending_cr = ch == "\r"
                self._line(buffer[start:i], out)
                start = i + 1
            else:
                self._pending_cr = False
            i += 1
        self._text = buffer[start:]
        return out

    def _line(self, line: str, out: list[SSEMessage]) -> None:
        if line == "":
            if self._data:
                out.append(SSEMessage(self._event or "message", "\n".join(self._data), self._last_id, self._retry))
            self._data = []
            self._event = ""
            self._retry = None
            return
        if line.startswith(":"):
            if self.comments is not None:
                self.comments.append(line[1:].removeprefix(" "))
            return
        name, sep, value = line.partition(":")
        if sep:
            value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:
                self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = self.reconnection_time = int(value)


def parse_sse(data: bytes) -> list[SSEMessage]:
    """Parse a whole byte string; a trailing incomplete event is discarded, as clients do."""
    return SSEParser().feed(data)
