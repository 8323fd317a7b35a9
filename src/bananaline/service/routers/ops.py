"""Operations: liveness, readiness (database and store reachable), Prometheus metrics, usage."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import math
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from ...errors import ErrorKind, GenerationError
from ..deps import CallerDep, StateDep
from ..http_errors import ServiceError
from ..metrics import CONTENT_TYPE

router = APIRouter(tags=["ops"])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    database: str
    store: str


@router.get("/healthz", operation_id="healthz", summary="Liveness", response_model=Health)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="readyz",
    summary="Readiness: database and store reachable",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "not ready"}},
)
async def readyz(state: StateDep) -> JSONResponse:
    database, store = "ok", "ok"

    def ping() -> None:
        with state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(asyncio.to_thread(ping), timeout=5.0)
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        database = f"error: {type(exc).__name__}"
    if state.store is not None:
        try:
            await asyncio.wait_for(state.store.check(), timeout=10.0)
        except GenerationError as error:
            store = f"error: {error.detail or error.message}"
        except Exception as exc:  # noqa: BLE001
            store = f"error: {type(exc).__name__}"
    ready = database == "ok" and store == "ok"
    body = {"status": "ready" if ready else "not_ready", "database": database, "store": store}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    operation_id="metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}},
        401: {"description": "metrics_token set and not sent"},
        403: {"description": "no metrics_token and not a loopback peer"},
    },
)
async def metrics(request: Request, state: StateDep) -> Response:
    """Per-caller spend is not public: with ``metrics_token`` set, only ``Bearer <metrics_token>``
    reads it; without one, only loopback peers (after a trusted proxy's ``X-Forwarded-For``)."""
    expected = state.settings.metrics_token.get_secret_value() if state.settings.metrics_token else ""
    if expected:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise ServiceError(
                401,
                ErrorKind.UNAUTHORIZED,
                "/metrics needs Authorization: Bearer <BANANALINE_METRICS_TOKEN>",
                "/metrics 需要 Authorization: Bearer <BANANALINE_METRICS_TOKEN>",
                headers={"WWW-Authenticate": "Bearer"},
            )
    elif not _is_loopback(request.client.host if request.client else None):
        raise ServiceError(
            403,
            ErrorKind.UNAUTHORIZED,
            "/metrics answers loopback only; set BANANALINE_METRICS_TOKEN to read it from elsewhere",
            "/metrics 仅对本机开放；如需远程读取请设置 BANANALINE_METRICS_TOKEN",
        )
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


def _is_loopback(host: str | None) -> bool:
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def parse_time(value: str | None, name: str) -> float | None:
    """Epoch seconds, an ISO 8601 date or datetime (UTC unless it says otherwise)."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None and math.isfinite(number):
        return number
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ServiceError(
            422,
            ErrorKind.INVALID_INPUT.value,
            f"{name} must be epoch seconds or an ISO 8601 date/time, got {value[:40]!r}",
            f"{name} 须为 Unix 秒数或 ISO 8601 日期时间",
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


class UsageRow(BaseModel):
    caller_id: str | None
    model: str
    image_size: str | None
    requests: int
    succeeded: int
    images: int
    cost_usd: float


class UsageSummary(BaseModel):
    caller: str
    since: float | None
    until: float | None
    requests: int
    succeeded: int
    images: int
    cost_usd: float
    budget_usd: float | None
    errors: dict[str, int]
    by_model: list[UsageRow]


@router.get(
    "/v1/usage",
    operation_id="get_usage",
    summary="我的用量与费用 / My usage and cost",
    response_model=UsageSummary,
    responses={401: {"description": "service token required"}, 422: {"description": "bad time range"}},
)
async def usage(
    state: StateDep,
    caller: CallerDep,
    since: str | None = Query(None, max_length=40, description="epoch seconds or ISO 8601"),
    until: str | None = Query(None, max_length=40, description="epoch seconds or ISO 8601"),
) -> dict[str, Any]:
    since_s, until_s = parse_time(since, "since"), parse_time(until, "until")
    summary = await asyncio.to_thread(state.usage.summary, caller.id, since=since_s, until=until_s)
    return {"caller": caller.name, "budget_usd": caller.budget_usd, **summary}
