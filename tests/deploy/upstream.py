"""What the proxies forward to: the real ssehub app, plus one echo path that shows what reached the upstream.

The page (``/``) is the browser test's page, served without a proxy for the HTTP/1.1 control; ``/metrics``
stands for the hub's root paths, which the proxies must not expose.
The echo (``{prefix}/_echo``, any method) answers with the request as the upstream received it: method, HTTP
version, headers and the peer's port (the proxy's end of the upstream connection, so two requests on one port
rode one kept-alive connection). It answers CORS-style headers too, so a test can see that the proxy hands an
upstream's ``Access-Control-*`` answer back untouched. Every other request goes to ssehub's standalone app
unchanged (the fast stream path included), so streams behave exactly as under ``ssehub serve``.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from ssehub._types import ASGIApp, Receive, Scope, Send

PAGE = """<!doctype html><meta charset="utf-8"><title>ssehub through a proxy</title>
<script>
// STREAMS EventSources on one page: over HTTP/1.1 a browser opens at most 6 connections per origin, so the
// 7th and later stay pending; over HTTP/2 they all share one connection and all open.
window.log = [];
window.errors = 0;
const params = new URLSearchParams(location.search);
const api = params.get("api") || "/api/v1/events";
const channel = params.get("channel") || "proxy:browser";
const count = Number(params.get("streams") || "8");
window.sources = [];
for (let i = 0; i < count; i++) {
  const source = new EventSource(`${api}/stream?channels=${channel}`, {withCredentials: params.has("credentials")});
  source.addEventListener("connected", (e) => log.push({stream: i, type: "connected", data: JSON.parse(e.data)}));
  source.addEventListener("note", (e) => {
    log.push({stream: i, type: "note", id: e.lastEventId, data: JSON.parse(e.data)});
  });
  source.onerror = () => { window.errors += 1; };
  sources.push(source);
}
</script>"""


def with_echo(app: ASGIApp, prefix: str, page: str, on_first_chunk: Callable[[str], None]) -> ASGIApp:
    """``app`` with an echo endpoint at ``{prefix}/_echo`` and ``page`` at ``/`` in front of it.

    ``on_first_chunk(signal)`` is called (in the server's thread) when the first part of a request body with an
    ``x-echo-signal: <signal>`` header arrives, before the rest: a test sees whether the proxy streams bodies.
    """
    echo_path = prefix + "/_echo"

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/":
            page_headers = [(b"content-type", b"text/html; charset=utf-8")]
            await send({"type": "http.response.start", "status": 200, "headers": page_headers})
            await send({"type": "http.response.body", "body": page.encode()})
            return
        if scope["type"] == "http" and scope["path"] == "/metrics":
            # Stands for the hub's root paths (ssehub serves /metrics at its root, outside the API prefix).
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"upstream root path"})
            return
        if scope["type"] != "http" or scope["path"] != echo_path:
            await app(scope, receive, send)
            return
        signal = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"x-echo-signal"), None)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if signal is not None and body:
                on_first_chunk(signal)
                signal = None
            if not message.get("more_body", False):
                break
        headers: dict[str, list[str]] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
        client = scope.get("client") or ("", 0)
        answer = {
            "method": scope["method"],
            "http_version": scope["http_version"],
            "path": scope["path"],
            "query": scope["query_string"].decode("latin-1"),
            "headers": headers,
            "peer_port": client[1],
            "body_bytes": len(body),
        }
        origin = headers.get("origin", [""])[0]
        response_headers = [(b"content-type", b"application/json")]
        if origin:
            response_headers += [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-credentials", b"true"),
                (b"access-control-allow-headers", b"authorization, last-event-id"),
                (b"vary", b"Origin"),
            ]
        await send({"type": "http.response.start", "status": 200, "headers": response_headers})
        await send({"type": "http.response.body", "body": json.dumps(answer).encode()})

    return wrapper
