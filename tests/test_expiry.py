"""Early deadlines: streams whose token expires before the shared connection timeout."""

from __future__ import annotations

import time

from ssehub.connection import Connection
from ssehub.expiry import EarlyDeadlines, token_deadline
from ssehub.grants import Grant


def _connection(name: str) -> Connection:
    return Connection(name, 1024, lambda connection: None, 0.0)


def test_due_returns_passed_deadlines_in_order() -> None:
    """The heap hands back exactly the connections whose deadline passed, earliest first, each once."""
    early = EarlyDeadlines()
    a, b, c = _connection("a"), _connection("b"), _connection("c")
    early.add(30.0, c)
    early.add(10.0, a)
    early.add(20.0, b)
    assert early.due(5.0) == []
    assert early.due(20.0) == [a, b]
    assert early.due(25.0) == []
    assert early.due(100.0) == [c]
    assert len(early) == 0


def test_token_deadline_only_when_before_the_timeout() -> None:
    """A token expiring before the stream's timeout gives a deadline in loop time; later or no expiry gives none."""
    now = time.time()
    loop_now = 1000.0
    soon = Grant.build("jwt", "jwt:a", subject="a", expires_at=now + 60)
    deadline = token_deadline(soon, loop_now, loop_now + 300)
    assert deadline is not None
    assert 1055.0 < deadline <= 1060.5
    assert token_deadline(Grant.build("jwt", "jwt:a", expires_at=now + 600), loop_now, loop_now + 300) is None
    assert token_deadline(Grant.build("api_key", "k"), loop_now, loop_now + 300) is None
    assert token_deadline(None, loop_now, loop_now + 300) is None
