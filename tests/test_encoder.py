"""The one SSE encoder: exact bytes, refusal of forged fields, and a round trip through a spec parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssehub.encoder import encode
from ssehub.exceptions import InvalidValueError
from ssehub.testing import SSEParser, parse_sse


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"data": "hello"}, b"data: hello\n\n"),
        ({"data": "x", "event": "download_progress", "id": "1-0"}, b"id: 1-0\nevent: download_progress\ndata: x\n\n"),
        ({"data": "a\nb"}, b"data: a\ndata: b\n\n"),
        ({"data": "a\r\nb"}, b"data: a\ndata: b\n\n"),
        ({"data": "a\rb"}, b"data: a\ndata: b\n\n"),
        ({"data": "a\r\n\r\nb\n"}, b"data: a\ndata: \ndata: b\ndata: \n\n"),
        ({"data": ""}, b"data: \n\n"),
        ({"data": " leading space"}, b"data:  leading space\n\n"),
        ({"data": "a\u2028b\x85c\x0cd"}, "data: a\u2028b\x85c\x0cd\n\n".encode()),
        ({"data": "ünï"}, "data: ünï\n\n".encode()),
        ({"retry": 3000}, b"retry: 3000\n\n"),
        ({"comment": "keepalive"}, b": keepalive\n\n"),
        ({"comment": "two\nlines"}, b": two\n: lines\n\n"),
        ({"comment": ""}, b":\n\n"),
        ({"id": "", "data": "x"}, b"id\ndata: x\n\n"),
        (
            {"data": "{}", "event": "connected", "id": "5-1", "retry": 10},
            b"retry: 10\nid: 5-1\nevent: connected\ndata: {}\n\n",
        ),
    ],
)
def test_exact_bytes(kwargs: dict[str, object], expected: bytes) -> None:
    """Each field is written as the spec says, data split only on CR, LF and CRLF."""
    assert encode(**kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\x00b", "\r\n"])
@pytest.mark.parametrize("field", ["id", "event"])
def test_forged_fields_are_refused(field: str, bad: str) -> None:
    """CR, LF or NUL in an id or event type would forge fields: refused with a clear error."""
    with pytest.raises(InvalidValueError, match=f"SSE {'event type' if field == 'event' else 'id'}"):
        encode("x", **{field: bad})  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, True, 1.5, "10"])
def test_bad_retry_is_refused(bad: object) -> None:
    """retry must be a non-negative integer number of milliseconds."""
    with pytest.raises(InvalidValueError):
        encode(retry=bad)  # type: ignore[arg-type]


def test_empty_block_is_refused() -> None:
    """A block with nothing in it would be a blank line that dispatches nothing: refused."""
    with pytest.raises(InvalidValueError):
        encode()


def _normalize(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


@given(data=st.text(), event=st.from_regex(r"[A-Za-z0-9_]{1,20}", fullmatch=True), seq=st.integers(0, 10**6))
def test_round_trip_through_spec_parser(data: str, event: str, seq: int) -> None:
    """Any text payload comes back from a spec-following parser as sent (line ends normalized to LF)."""
    try:
        frame = encode(data, event=event, id=f"1-{seq}")
    except UnicodeEncodeError:
        return  # lone surrogates are not UTF-8: the publish path refuses them before encoding
    [message] = parse_sse(frame)
    assert message.data == _normalize(data)
    assert message.event == event
    assert message.id == f"1-{seq}"


@given(st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=30), min_size=1, max_size=8), st.data())
def test_round_trip_in_arbitrary_chunks(payloads: list[str], draw: st.DataObject) -> None:
    """Frames cut at any byte, even inside a CRLF or a UTF-8 sequence, parse to the same events."""
    stream = b"".join(encode(p, id=str(i)) for i, p in enumerate(payloads))
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    parser = SSEParser()
    got = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        got.extend(parser.feed(stream[previous:cut]))
        previous = cut
    assert [m.data for m in got] == [_normalize(p) for p in payloads]
    assert [m.id for m in got] == [str(i) for i in range(len(payloads))]


def test_parser_follows_spec_details() -> None:
    """The test parser itself: BOM, CR line ends, comments, no-space values, ignored retry and NUL ids."""
    stream = "\ufeffdata:x\r\rid: a\x00b\ndata: y\nretry: 1x\n: note\n\ndata\n\nevent: e\n".encode()
    parser = SSEParser()
    messages = parser.feed(stream)
    assert [(m.data, m.id, m.retry) for m in messages] == [("x", "", None), ("y", "", None), ("", "", None)]
    assert parser.comments == ["note"]
