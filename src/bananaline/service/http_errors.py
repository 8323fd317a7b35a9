"""Errors as HTTP answers, in the shape of the door the request came in by.

One table maps a bananaline error kind to an HTTP status; the body follows the caller's
protocol so its SDK can read it:

* ``/v1beta/…``, ``/v1/models/…`` (Gemini native):
  ``{"error": {"code", "message", "status", "details": [ErrorInfo]}}``
  with ``reason`` = the bananaline kind;
* ``/v1/chat/…``, ``/v1/images/…`` (OpenAI): ``{"error": {"message", "type", "param", "code"}}``
  with ``code`` = the kind;
* ``/v1/plugin/…``, ``/v1/tasks/…``: the plugin answer (``analysis`` = 图片生成失败, ``error``,
  ``error_kind``…), so a workflow node reads failures the way it reads results;
* everything else: ``{"error": {"kind", "message", "message_zh", "detail"}}``.

Bad input is always a 4xx with a message that says what to fix; a 500 means a bug.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ErrorKind, GenerationError, redact
from ..logs import get_logger

log = get_logger("bananaline.service")

#: Content refusals: the model declined; repeating the same request will not help.
_REFUSALS = {
    ErrorKind.PROMPT_BLOCKED,
    ErrorKind.ZERO_CANDIDATES_TOKEN,
    ErrorKind.FINISH_REASON,
    ErrorKind.TEXT_RESPONSE,
    ErrorKind.OUTPUT_CHECK,
}

_STATUS_BY_KIND: dict[ErrorKind, int] = {
    ErrorKind.INVALID_INPUT: 422,
    ErrorKind.REFERENCE_ERROR: 422,
    ErrorKind.NO_API_KEY: 401,
    ErrorKind.BAD_REQUEST: 400,
    ErrorKind.BUDGET_EXCEEDED: 402,
    ErrorKind.QUOTA: 402,
    ErrorKind.RATE_LIMITED: 429,
    ErrorKind.AUTH: 502,
    ErrorKind.UPSTREAM_ERROR: 502,
    ErrorKind.NETWORK: 502,
    ErrorKind.MALFORMED_RESPONSE: 502,
    ErrorKind.NO_CANDIDATES: 502,
    ErrorKind.NO_PARTS: 502,
    ErrorKind.INLINE_DATA_EMPTY: 502,
    ErrorKind.INVALID_IMAGE: 502,
    ErrorKind.STORAGE: 503,
    ErrorKind.TIMEOUT: 504,
}

#: The kinds a plugin call answers with a 4xx instead of a 200 "图片生成失败".
CLIENT_ERROR_KINDS = {
    ErrorKind.INVALID_INPUT,
    ErrorKind.REFERENCE_ERROR,
    ErrorKind.BUDGET_EXCEEDED,
    ErrorKind.RATE_LIMITED,
}


def status_for(error: GenerationError) -> int:
    if error.kind in _REFUSALS:
        return 422
    return _STATUS_BY_KIND.get(error.kind, 502)


def status_for_kind(kind: str) -> int:
    try:
        return status_for(GenerationError(ErrorKind(kind)))
    except ValueError:
        return 502


class ServiceError(Exception):
    """An HTTP-level refusal whose ``kind`` is a value of the one taxonomy, :class:`ErrorKind`."""

    def __init__(
        self,
        status_code: int,
        kind: ErrorKind | str,
        message: str,
        message_zh: str | None = None,
        *,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.kind = ErrorKind(kind).value
        self.message = redact(message)
        self.message_zh = redact(message_zh or message)
        self.detail = detail
        self.headers = headers or {}

    @classmethod
    def from_generation_error(cls, error: GenerationError, status_code: int | None = None) -> ServiceError:
        headers = {}
        if error.retry_after_s:
            headers["Retry-After"] = str(max(1, round(error.retry_after_s)))
        return cls(
            status_code or status_for(error),
            error.kind.value,
            error.message,
            error.message_zh,
            detail=error.detail,
            headers=headers,
        )


def not_found(what: str = "resource") -> ServiceError:
    """The same answer whether the thing does not exist or belongs to someone else."""
    return ServiceError(
        404, ErrorKind.NOT_FOUND, f"{what} not found", f"未找到该{_ZH_WHAT.get(what, '资源')}"
    )


_ZH_WHAT = {"task": "任务", "batch": "批次", "file": "文件", "resource": "资源"}

_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "RESOURCE_EXHAUSTED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    413: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

_OPENAI_TYPE = {
    401: "authentication_error",
    402: "insufficient_quota",
    404: "not_found_error",
    429: "rate_limit_error",
}


def render(path: str, error: ServiceError) -> JSONResponse:
    status = error.status_code
    if path.startswith(("/v1beta/", "/v1/models/")):
        body: dict[str, Any] = {
            "error": {
                "code": status,
                "message": f"[{error.kind}] {error.message}",
                "status": _GOOGLE_STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION"),
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": error.kind,
                        "domain": "bananaline",
                        "metadata": {
                            "message_zh": error.message_zh,
                            **({"detail": str(error.detail)} if error.detail else {}),
                        },
                    }
                ],
            }
        }
    elif path.startswith(("/v1/chat/", "/v1/images/")):
        body = {
            "error": {
                "message": f"[{error.kind}] {error.message}",
                "type": _OPENAI_TYPE.get(status, "api_error" if status >= 500 else "invalid_request_error"),
                "param": None,
                "code": error.kind,
            }
        }
    elif path.startswith(("/v1/plugin/", "/v1/tasks/")):
        body = {
            "analysis": "图片生成失败",
            "url": "",
            "urls": [],
            "error": f"{error.message_zh} / {error.message}"
            if error.message_zh != error.message
            else error.message,
            "error_kind": error.kind,
            "warnings": [],
            "task_id": "",
            "status": "failed",
        }
    else:
        body = {
            "error": {
                "kind": error.kind,
                "message": error.message,
                "message_zh": error.message_zh,
                "detail": error.detail,
            }
        }
    return JSONResponse(body, status_code=status, headers=error.headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    problems = []
    for item in exc.errors()[:20]:
        location = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        problems.append(
            {"field": location, "problem": str(item.get("msg", ""))[:300], "type": item.get("type")}
        )
    if any(p["type"] == "json_invalid" for p in problems):
        return "the request body is not valid JSON", problems
    text = "; ".join(f"{p['field'] or 'body'}: {p['problem']}" for p in problems[:5])
    return f"invalid request: {text}", problems


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return render(request.url.path, exc)

    @app.exception_handler(GenerationError)
    async def _generation_error(request: Request, exc: GenerationError) -> JSONResponse:
        return render(request.url.path, ServiceError.from_generation_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, problems = _validation_message(exc)
        kind = ErrorKind.INVALID_INPUT.value
        return render(
            request.url.path, ServiceError(422, kind, message, f"请求参数无效：{message}", detail=problems)
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {401: ErrorKind.UNAUTHORIZED, 404: ErrorKind.NOT_FOUND, 413: ErrorKind.PAYLOAD_TOO_LARGE}
        kind = kinds.get(
            exc.status_code, ErrorKind.BAD_REQUEST if exc.status_code < 500 else ErrorKind.INTERNAL
        )
        error = ServiceError(exc.status_code, kind, str(exc.detail), headers=dict(exc.headers or {}))
        return render(request.url.path, error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled_error", path=request.url.path, error=type(exc).__name__, exc_info=exc)
        return render(
            request.url.path, ServiceError(500, ErrorKind.INTERNAL, "internal error; see the service log")
        )
