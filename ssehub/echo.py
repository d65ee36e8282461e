"""``POST {prefix}/test/echo``: publish a list of messages to a channel, for application tests.

Off by default (``SSEHUB_ENABLE_TEST_ENDPOINTS=true`` turns it on). An application's test subscribes its page or
client to a channel, asks the hub to echo known messages there, and checks they arrive: its own wiring (proxy,
mount path, auth, client code) is then tested end to end without a real producer.

Body::

    {"channel": "session:ab12", "messages": [{"event": "document_locked", "data": {"by": "alice"}}, ...]}

Answer: 201 ``{"channel": "...", "ids": ["...", ...]}``, the ids in the order of the messages. Every message is
validated before the first is published; then they are published in order, so a broker failure (503) may leave
the first ones published. As for ``POST /publish``: with credentials configured the caller needs publish rights on
the channel (a token in a header: 401 without, 403 without the right), the request counts against the publish
rate limit, and the body is read within the hub's size and time limits.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ssehub.events import dump_json, validate_event_type
from ssehub.exceptions import InvalidValueError
from ssehub.hub import Hub

__all__ = ["MAX_MESSAGES", "echo"]

#: Messages one request may publish.
MAX_MESSAGES = 100
_BODY_FIELDS = frozenset({"channel", "messages"})
_MESSAGE_FIELDS = frozenset({"event", "data"})


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _validate(hub: Hub, payload: Any) -> tuple[str, list[tuple[str, Any]]]:
    """The channel and the (event, data) pairs of a valid body. Raises InvalidValueError naming the problem."""
    if not isinstance(payload, dict) or payload.keys() != _BODY_FIELDS:
        raise InvalidValueError('the body must be a JSON object {"channel": "...", "messages": [...]}', "INVALID_BODY")
    channel, messages = payload["channel"], payload["messages"]
    if not isinstance(channel, str):
        raise InvalidValueError("channel must be a string", "INVALID_BODY")
    hub.check_channel(channel)
    if not isinstance(messages, list) or not 1 <= len(messages) <= MAX_MESSAGES:
        raise InvalidValueError(f"messages must be a list of 1 to {MAX_MESSAGES} messages", "INVALID_BODY")
    checked: list[tuple[str, Any]] = []
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or message.keys() != _MESSAGE_FIELDS or not isinstance(message["event"], str):
            raise InvalidValueError(
                f'messages[{number}] must be an object {{"event": "<type>", "data": <any JSON>}}', "INVALID_BODY"
            )
        validate_event_type(message["event"])
        text = dump_json(message["data"])
        if len(text.encode("utf-8")) > hub.settings.max_payload_bytes:
            raise InvalidValueError(
                f"messages[{number}].data is larger than {hub.settings.max_payload_bytes} bytes", "PAYLOAD_TOO_LARGE"
            )
        checked.append((message["event"], message["data"]))
    return channel, checked


async def echo(request: Request) -> Response:
    """Authenticate, rate-limit and validate as ``POST /publish`` does, then publish the messages in order."""
    # Imported here: app.py routes to this module; its error mapping and body rules are the ones every endpoint
    # shares.
    from ssehub.answers import HUB_ERRORS, error_for
    from ssehub.limits import RateLimiter, drain_before_refusal, identity_of, rate_key, read_body

    hub: Hub = request.app.state.hub
    settings = hub.settings
    limiter: RateLimiter = request.app.state.publish_rate
    try:
        # As for POST /publish: credentials from headers only; publish rights on the channel are checked below.
        grant = await hub.auth.authenticate(request, query=False, cookie=False)
        limiter.check(rate_key(request.scope, identity_of(grant)))
    except HUB_ERRORS as exc:
        response = error_for(exc)
        if not await drain_before_refusal(request.scope, request.receive, settings):
            response.headers["Connection"] = "close"
        return response
    try:
        # The whole list is one request: it may be as large as its messages together, within reason.
        body = await read_body(
            request.scope,
            request.receive,
            limit=settings.max_payload_bytes * 4,
            timeout=settings.body_timeout,
            drain=settings.max_drain_bytes,
        )
        payload = json.loads(body, parse_constant=_reject_constant)
    except HUB_ERRORS as exc:
        return error_for(exc)
    except ValueError as exc:
        return _error(422, "INVALID_JSON", f"the body is not valid JSON: {exc}")
    except RecursionError:
        return _error(422, "INVALID_JSON", "the body is nested too deeply")
    try:
        channel, messages = _validate(hub, payload)
        hub.auth.authorize_publish(grant, channel)
        ids = [str((await hub.publish(channel, event, data)).id) for event, data in messages]
    except HUB_ERRORS as exc:
        return error_for(exc)
    return JSONResponse({"channel": channel, "ids": ids}, status_code=201)
