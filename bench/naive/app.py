"""BASELINE, NOT SSEHUB: the naive design the benchmark compares ssehub against.

FastAPI + sse-starlette + redis.asyncio, written the way most tutorials do it: every browser connection opens its
own Redis pub/sub connection, and every event is JSON-decoded and re-encoded once per connection. It has no
history, so it cannot resume (the resume-storm scenario skips it). It speaks ssehub's HTTP API so the same load
generator drives it:

    GET  /api/v1/events/stream?channels=a,b   -> text/event-stream
    POST /api/v1/events/publish {"channel", "event", "data"} -> 201 {"id", "channel"}

Run: NAIVE_REDIS_URL=redis://127.0.0.1:PORT/0 uvicorn naive.app:app --app-dir bench
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from redis import asyncio as aioredis
from sse_starlette.sse import EventSourceResponse

REDIS_URL = os.environ.get("NAIVE_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = "naive:"

app = FastAPI(title="naive SSE baseline")
redis = aioredis.from_url(REDIS_URL, max_connections=50_000)  # a pool big enough for one per browser
_seq = itertools.count()


@app.post("/api/v1/events/publish", status_code=201)
async def publish(request: Request) -> JSONResponse:
    body = await request.json()
    event_id = f"{int(time.time() * 1000)}-{next(_seq)}"
    message = json.dumps({"id": event_id, "event": body.get("event", "message"), "data": body.get("data")})
    await redis.publish(PREFIX + body["channel"], message)
    return JSONResponse({"id": event_id, "channel": body["channel"]}, status_code=201)


@app.get("/api/v1/events/stream")
async def stream(channels: str = "default") -> EventSourceResponse:
    names = [name for name in channels.split(",") if name]

    async def events() -> AsyncIterator[dict[str, Any]]:
        pubsub = redis.pubsub()  # one Redis connection per browser: the defining cost of this design
        await pubsub.subscribe(*(PREFIX + name for name in names))
        try:
            yield {"event": "connected", "data": json.dumps({"channels": names})}
            async for message in pubsub.listen():
                if message["type"] != "message":
                    continue
                event = json.loads(message["data"])  # decoded and re-encoded for every connection
                data = json.dumps(event["data"], separators=(",", ":"))
                yield {"id": event["id"], "event": event["event"], "data": data}
        finally:
            await pubsub.aclose()

    return EventSourceResponse(events(), ping=30)
