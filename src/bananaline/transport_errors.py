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
#: Google's QuotaFailure message line: "Quota exceeded for metric: ..., limit: 0, model: ...".
_ZERO_LIMIT_RE = re.compile(r"(?i)\blimit:\s*0(?![0-9.])")
_MODEL_IN_MESSAGE_RE = re.compile(r"(?i)\bmodel:\s*([A-Za-z0-9._/-]+)")


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


def _quota_violations(error_body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    violations: list[Mapping[str, Any]] = []
    for item in error_body.get("details") or []:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("google.rpc.QuotaFailure"):
            violations.extend(v for v in item.get("violations") or [] if isinstance(v, dict))
    return violations


def zero_quota(error_body: Mapping[str, Any]) -> tuple[str, str] | None:
    """Whether a ``RESOURCE_EXHAUSTED`` body says the quota *limit* is 0: ``(model, evidence)``.

    ``model`` is the model the body names ("" when none); ``evidence`` the upstream's own line.
    ``None`` when the limit is not 0. A limit of 0 is not a rate: the key's tier (typically the
    free tier) has no quota for the model at all, so waiting never helps. Google says so in a
    ``google.rpc.QuotaFailure`` violation whose ``quotaValue`` is ``"0"`` (proto3 JSON may omit a
    zero value) and in the message, ``Quota exceeded for metric: ..., limit: 0, model: ...``,
    which relays pass through.
    """
    message = str(error_body.get("message") or "")
    for line in message.splitlines():
        limit = _ZERO_LIMIT_RE.search(line)
        if limit is None:
            continue
        found = _MODEL_IN_MESSAGE_RE.search(line, limit.end())
        start = line.rfind("Quota exceeded", 0, limit.start())
        start = start if start >= 0 else max(0, limit.start() - 120)
        end = found.end() if found else limit.end()
        return (found.group(1) if found else ""), line[start:end].strip(" *\t")
    for violation in _quota_violations(error_body):
        value = violation.get("quotaValue", violation.get("quota_value"))
        if value is not None and str(value).strip() == "0":
            dimensions = violation.get("quotaDimensions") or violation.get("quota_dimensions") or {}
            model = str(dimensions.get("model") or "") if isinstance(dimensions, dict) else ""
            metric = violation.get("quotaMetric") or violation.get("quota_metric") or "quota"
            return model, f"{metric}, limit: 0" + (f", model: {model}" if model else "")
    return None


def zero_quota_error(model: str, detail: str, *, http_status: int | None = None) -> GenerationError:
    """``quota``, not retryable, saying why: the key's tier cannot use this model at all."""
    model_en = f"the model {model}" if model else "this model"
    model_zh = f"模型 {model} " if model else "该模型"
    return GenerationError(
        ErrorKind.QUOTA,
        detail=detail,
        message=(
            f"The API key's tier has no quota for {model_en} (limit: 0), so retrying cannot help: "
            "enable billing for the key's project, or use another API key or model"
        ),
        message_zh=(
            f"该 API 密钥所属层级对{model_zh}没有任何配额（limit: 0），重试无效："
            "请为该密钥所在项目开通结算（billing），或换用其他 API 密钥或模型"
        ),
        retryable=False,
        http_status=http_status,
    )


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
        zero = zero_quota(error_body) if kind is ErrorKind.RATE_LIMITED else None
        if zero is not None:
            model, evidence = zero
            prefix = f"{status} {phrase}"
            if status_word and str(status_word) != str(status):
                prefix += f" {status_word}"
            return zero_quota_error(model, f"{prefix}: {evidence}"[:400], http_status=status)
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
