"""One pure-ASGI middleware: request id, body-size cap, access log and HTTP metrics.

Pure ASGI rather than ``BaseHTTPMiddleware`` so a client disconnect never cancels a generation
and streaming bodies pass through untouched. The access log holds the path without its query
string (``?key=`` may carry a credential) and runs through the redacting processor anyway.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..logs import get_logger
from .metrics import ServiceMetrics

log = get_logger("bananaline.service.http")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")


#: An oversized body is read and thrown away up to this much, so the client gets its 413 instead
#: of a connection reset mid-upload; beyond it the connection is simply closed.
_DRAIN_CAP_BYTES = 512 * 1024 * 1024


async def _drain(receive: Receive, cap_bytes: int) -> None:
    drained = 0
    while drained <= cap_bytes:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class PayloadTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes (BANANALINE_MAX_UPLOAD_BYTES)")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: ServiceMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        incoming = headers.get("x-request-id", "")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = {"code": 500}
        limit = self.max_body_bytes

        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _drain(receive, _DRAIN_CAP_BYTES)
            await self._reject_too_large(scope, send, request_id, limit)
            self._done(scope, 413, started)
            return

        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if message.get("more_body", False):
                        await _drain(receive, _DRAIN_CAP_BYTES)
                    raise PayloadTooLarge(limit)
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode("ascii"))]
            await send(message)

        try:
            await self.app(scope, counted_receive, send_with_id)
        finally:
            self._done(scope, status["code"], started)
            structlog.contextvars.unbind_contextvars("request_id")

    async def _reject_too_large(self, scope: Scope, send: Send, request_id: str, limit: int) -> None:
        body = (
            b'{"error":{"kind":"payload_too_large","message":"request body larger than '
            + str(limit).encode()
            + b' bytes","message_zh":"\xe8\xaf\xb7\xe6\xb1\x82\xe4\xbd\x93\xe8\xbf\x87\xe5\xa4\xa7"}}'
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                    (b"x-request-id", request_id.encode("ascii")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _done(self, scope: Scope, status_code: int, started: float) -> None:
        elapsed_s = time.perf_counter() - started
        route: Any = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        method = scope.get("method", "")
        self.metrics.http_requests.labels(method=method, route=template, status=str(status_code)).inc()
        self.metrics.http_latency.labels(route=template).observe(elapsed_s)
        log.info(
            "http_request",
            method=method,
            path=scope.get("path", ""),
            route=template,
            status=status_code,
            elapsed_s=round(elapsed_s, 4),
        )
