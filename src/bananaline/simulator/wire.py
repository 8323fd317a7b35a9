"""Low-level ASGI pieces: bodies sent as cached chunks (whole, cut, or dropped mid-way) and
waits that end early when the client goes away or the server stops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, Literal

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

BodyMode = Literal["full", "truncate", "drop"]


class ChunkedResponse:
    """A response whose body is a list of byte chunks, sent without joining them.

    ``mode="truncate"`` sends a complete HTTP response whose body is only the first half of
    the JSON (``truncated_json``). ``mode="drop"`` announces the full ``Content-Length``, sends
    part of the body and returns without finishing: uvicorn then closes the connection, and
    the client sees a protocol/read error (``reset_mid_body``).
    """

    def __init__(
        self,
        chunks: Iterable[bytes],
        status_code: int = 200,
        media_type: str = "application/json; charset=UTF-8",
        headers: dict[str, str] | None = None,
        mode: BodyMode = "full",
    ) -> None:
        self.chunks = [chunk for chunk in chunks if chunk]
        self.status_code = status_code
        self.media_type = media_type
        self.headers = headers or {}
        self.mode = mode

    def _cut(self, limit: int) -> list[bytes]:
        out: list[bytes] = []
        for chunk in self.chunks:
            if limit <= 0:
                break
            out.append(chunk[:limit] if len(chunk) > limit else chunk)
            limit -= len(chunk)
        return out

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        total = sum(len(chunk) for chunk in self.chunks)
        chunks = self.chunks
        length = total
        if self.mode != "full":
            chunks = self._cut(max(1, total // 2))
            if self.mode == "truncate":
                length = sum(len(chunk) for chunk in chunks)
        headers = [
            (b"content-type", self.media_type.encode("latin-1")),
            (b"content-length", str(length).encode("ascii")),
            *(
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in self.headers.items()
            ),
        ]
        await send({"type": "http.response.start", "status": self.status_code, "headers": headers})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if self.mode == "drop":
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def wait_unless_gone(request: Request, delay_s: float, stopping: asyncio.Event | None) -> bool:
    """Sleep ``delay_s``; return False early if the client disconnects or the server stops.

    The request body must have been read already: the next ``receive`` then only ever
    reports a disconnect.
    """
    if delay_s <= 0:
        return True
    sleeper = asyncio.ensure_future(asyncio.sleep(delay_s))
    watchers: list[asyncio.Future[Any]] = [asyncio.ensure_future(request.receive())]
    if stopping is not None:
        watchers.append(asyncio.ensure_future(stopping.wait()))
    try:
        await asyncio.wait([sleeper, *watchers], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, *watchers):
            task.cancel()
    return sleeper.done() and not sleeper.cancelled()


class QuietDroppedResponses(logging.Filter):
    """Hide uvicorn's error line for responses we drop on purpose (``reset_mid_body``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "returned without completing response" not in record.getMessage()


def install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(existing, QuietDroppedResponses) for existing in logger.filters):
        logger.addFilter(QuietDroppedResponses())
