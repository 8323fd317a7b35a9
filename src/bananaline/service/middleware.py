"""One pure-ASGI middleware: request id, trusted proxy headers, body-size cap, access log and
HTTP metrics.

Pure ASGI rather than ``BaseHTTPMiddleware`` so a client disconnect never cancels a generation
and streaming bodies pass through untouched. The access log holds the path without its query
string (``?key=`` may carry a credential) and runs through the redacting processor anyway.

Body limits: a request carrying a service token (``bl_…``) may send ``max_upload_bytes``; any other
request (an own upstream key, or nothing) at most ``max_unauthenticated_body_bytes``. A declared
``Content-Length`` over the limit is refused before the body is read; a chunked body is counted
as it streams in and cut the moment it passes the limit.

Proxy headers: only when the direct peer is in ``trusted_proxies`` are ``X-Forwarded-Proto``
(the scheme), ``X-Forwarded-For`` (the client, rightmost untrusted hop) applied to the scope and
``X-Forwarded-Host`` / ``X-Forwarded-Prefix`` recorded for :func:`~.deps.files_base_url`; from
anyone else they are ignored. ``bananaline serve`` turns uvicorn's own proxy handling off so this
is the one place that decides.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
import uuid
from collections.abc import Iterable
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import request_scoped_secrets
from ..logs import get_logger
from .auth import credential_from, is_service_token
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


#: Where a trusted proxy's ``X-Forwarded-Host``/``-Prefix`` are kept in the scope.
FORWARDED_SCOPE_KEY = "bananaline.forwarded"
_FORWARDED_HOST = re.compile(r"^[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?$")
_FORWARDED_PREFIX = re.compile(r"^(/[A-Za-z0-9._~!$&'()*+,;=:@%\-]+)*/?$")

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[_Network, ...]:
    """IPs and CIDRs (``127.0.0.1``, ``10.0.0.0/8``, ``::1``); a bad entry is a start-up error."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip())


def peer_in(host: str | None, networks: tuple[_Network, ...]) -> bool:
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)


def _too_large_message(limit: int, setting: str) -> str:
    return f"request body larger than {limit} bytes (BANANALINE_{setting})"


class PayloadTooLarge(HTTPException):
    def __init__(self, limit: int, setting: str = "MAX_UPLOAD_BYTES") -> None:
        super().__init__(413, _too_large_message(limit, setting))


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: ServiceMetrics,
        max_body_bytes: int,
        max_unauthenticated_body_bytes: int | None = None,
        trusted_proxies: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.max_unauthenticated_body_bytes = min(
            max_body_bytes,
            max_body_bytes if max_unauthenticated_body_bytes is None else max_unauthenticated_body_bytes,
        )
        self.trusted_proxies = parse_networks(trusted_proxies)

    def _body_limit(self, scope: Scope) -> tuple[int, str]:
        """The token limit for a ``bl_`` credential, the lower one for anything else."""
        credential = credential_from(HTTPConnection(scope))
        if credential and is_service_token(credential):
            return self.max_body_bytes, "MAX_UPLOAD_BYTES"
        return self.max_unauthenticated_body_bytes, "MAX_UNAUTHENTICATED_BODY_BYTES"

    def _apply_proxy_headers(self, scope: Scope, headers: dict[str, str]) -> None:
        client = scope.get("client")
        peer = client[0] if client else None
        if not peer_in(peer, self.trusted_proxies):
            return
        proto = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        if proto in ("http", "https"):
            scope["scheme"] = proto
        hops = [hop.strip() for hop in headers.get("x-forwarded-for", "").split(",") if hop.strip()]
        for hop in reversed(hops):
            if not peer_in(hop, self.trusted_proxies):
                scope["client"] = (hop, 0)
                break
        forwarded: dict[str, str] = {}
        host = headers.get("x-forwarded-host", "").split(",")[0].strip()
        if _FORWARDED_HOST.match(host):
            forwarded["host"] = host.lower()
        prefix = headers.get("x-forwarded-prefix", "").split(",")[0].strip()
        if prefix and _FORWARDED_PREFIX.match(prefix):
            forwarded["prefix"] = prefix.rstrip("/")
        scope[FORWARDED_SCOPE_KEY] = forwarded

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
        self._apply_proxy_headers(scope, headers)
        limit, setting = self._body_limit(scope)

        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _drain(receive, _DRAIN_CAP_BYTES)
            await self._reject_too_large(send, request_id, limit, setting)
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
                    raise PayloadTooLarge(limit, setting)
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode("ascii"))]
            await send(message)

        try:
            with request_scoped_secrets():  # own keys registered while serving it are not kept forever
                await self.app(scope, counted_receive, send_with_id)
        finally:
            self._done(scope, status["code"], started)
            structlog.contextvars.unbind_contextvars("request_id")

    async def _reject_too_large(self, send: Send, request_id: str, limit: int, setting: str) -> None:
        body = json.dumps(
            {
                "error": {
                    "kind": "payload_too_large",
                    "message": _too_large_message(limit, setting),
                    "message_zh": "请求体过大",
                }
            },
            ensure_ascii=False,
        ).encode("utf-8")
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
