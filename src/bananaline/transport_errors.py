"""Translate what the transport saw into the taxonomy: HTTP statuses, httpx exceptions, retry hints."""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import httpx

from .errors import ErrorKind, GenerationError

#: HTTP statuses with a kind of their own; other 4xx are ``bad_request``, 5xx ``upstream_error``.
STATUS_KINDS: dict[int, ErrorKind] = {
    400: ErrorKind.BAD_REQUEST,
    401: ErrorKind.AUTH,
    402: ErrorKind.QUOTA,
    403: ErrorKind.AUTH,
    404: ErrorKind.BAD_REQUEST,
    413: ErrorKind.BAD_REQUEST,
    422: ErrorKind.BAD_REQUEST,
    429: ErrorKind.RATE_LIMITED,
}

_DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)s\s*$")


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` is either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, parsed.timestamp() - time.time())


def _retry_info_delay(error_body: Mapping[str, Any]) -> float | None:
    for item in error_body.get("details") or []:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _DURATION_RE.match(str(item.get("retryDelay") or item.get("retry_delay") or ""))
            if match:
                return float(match.group(1))
    return None


def _error_reasons(error_body: Mapping[str, Any]) -> set[str]:
    reasons = set()
    for item in error_body.get("details") or []:
        if isinstance(item, dict) and item.get("reason"):
            reasons.add(str(item["reason"]))
    return reasons


def classify_http_status(status: int, headers: Mapping[str, str], body: bytes) -> GenerationError:
    """An upstream answer with a non-200 status, as a classified error.

    Reads Google's ``{"error": {code, message, status, details}}`` and OpenAI's
    ``{"error": {message, type, code}}`` alike; the message goes into ``detail``, redacted.
    """
    kind = STATUS_KINDS.get(status)
    if kind is None:
        kind = ErrorKind.UPSTREAM_ERROR if status >= 500 else ErrorKind.BAD_REQUEST
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "HTTP error"
    detail = f"{status} {phrase}"
    retry_after_s = parse_retry_after(headers.get("retry-after"))
    error_body: dict[str, Any] = {}
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        error_body = parsed["error"]
    elif isinstance(parsed, list) and parsed and isinstance(parsed[0], dict):
        error_body = parsed[0].get("error") or {}
    if error_body:
        status_word = error_body.get("status") or error_body.get("type") or error_body.get("code")
        message = str(error_body.get("message") or "")[:300]
        if status_word and str(status_word) != str(status):
            detail += f" {status_word}"
        if message:
            detail += f": {message}"
        if retry_after_s is None:
            retry_after_s = _retry_info_delay(error_body)
        if "API_KEY_INVALID" in _error_reasons(error_body):
            kind = ErrorKind.AUTH
    return GenerationError(kind, detail=detail, http_status=status, retry_after_s=retry_after_s)


def classify_transport_exception(exc: BaseException) -> GenerationError:
    """httpx's exceptions, as the taxonomy sees them.

    A timeout before the request was written is safe to retry; one after it may already be
    billed upstream, so it is reported but not retried.
    """
    name = type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return GenerationError(ErrorKind.TIMEOUT, detail=f"{name}: no connection", request_sent=False)
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return GenerationError(ErrorKind.TIMEOUT, detail=f"{name}: no answer in time", request_sent=True)
    if isinstance(exc, httpx.ConnectError):
        return GenerationError(ErrorKind.NETWORK, detail=f"{name}: {exc}", request_sent=False)
    if isinstance(exc, httpx.TransportError):
        return GenerationError(ErrorKind.NETWORK, detail=f"{name}: {exc or 'connection lost'}")
    return GenerationError(ErrorKind.NETWORK, detail=f"{name}: {exc}")
