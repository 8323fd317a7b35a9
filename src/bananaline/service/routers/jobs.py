"""The jobs API: the batch production line over HTTP, per caller (service token required).

Submit rows as JSON (``POST /v1/jobs``) or a CSV/XLSX/JSONL upload (``POST /v1/jobs/upload``);
the batch starts running at once. List, read status with per-row results, export the sheet with
result columns (CSV/XLSX/JSONL), retry failed rows, cancel queued ones. Another caller's batch id
answers 404, exactly like an unknown one.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ...batch import BatchInputError, BatchNotFound, ColumnConfig, read_table_bytes
from ...errors import ErrorKind, GenerationError
from ..auth import Principal
from ..deps import files_base_url, get_state, require_caller
from ..http_errors import ServiceError, not_found
from ..jobs_engine import check_budget, start_run

router = APIRouter(tags=["jobs"])

MAX_ROWS = 20_000
_XLSX_MAGIC = b"PK\x03\x04"


class Columns(BaseModel):
    """Which column holds what (defaults: prompt, refs, model, aspect_ratio, size, n)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, max_length=200)
    refs: list[str] | None = Field(None, max_length=20)
    model: str | None = Field(None, max_length=200)
    aspect_ratio: str | None = Field(None, max_length=200)
    size: str | None = Field(None, max_length=200)
    n: str | None = Field(None, max_length=200)
    template: str | None = Field(
        None, max_length=5000, description="Jinja2 prompt template over the row's columns"
    )
    default_model: str | None = Field(None, max_length=200)
    default_aspect_ratio: str | None = Field(None, max_length=16)
    default_size: str | None = Field(None, max_length=16)


class JobSubmission(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: list[dict[str, str | int | float | bool | None]] = Field(min_length=1, max_length=MAX_ROWS)
    columns: Columns | None = None
    name: str | None = Field(None, max_length=200)


class Submitted(BaseModel):
    batch_id: str
    started: bool
    batch: dict[str, Any]


class BatchList(BaseModel):
    batches: list[dict[str, Any]]


class Changed(BaseModel):
    batch_id: str
    changed: int
    started: bool = False


def _column_config(columns: Columns | None) -> ColumnConfig:
    if columns is None:
        return ColumnConfig()
    values = {k: (tuple(v) if k == "refs" else v) for k, v in columns.model_dump().items() if v is not None}
    try:
        return ColumnConfig(**values)
    except ValidationError as exc:
        raise _invalid(f"bad column mapping: {exc.errors()[0]['msg']}") from None


def _invalid(message: str) -> ServiceError:
    return ServiceError(422, ErrorKind.INVALID_INPUT.value, message, f"请求参数无效：{message}")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


async def _create_and_start(
    request: Request,
    principal: Principal,
    rows: list[dict[str, str]],
    header: list[str] | None,
    columns: ColumnConfig,
    name: str | None,
) -> JSONResponse:
    state = get_state(request)
    caller = principal.caller
    assert caller is not None and state.batches is not None
    if not rows:
        raise _invalid("the sheet has no rows")
    if len(rows) > MAX_ROWS:
        raise _invalid(f"at most {MAX_ROWS} rows per batch")
    try:
        batch_id = await asyncio.to_thread(
            state.batches.create_batch,
            rows,
            columns=columns,
            owner=caller.id,
            name=name,
            header=header,
            allow_local_refs=False,
        )
    except BatchInputError as exc:
        raise _invalid(str(exc)) from None
    started = await _start(request, principal, batch_id)
    info = await asyncio.to_thread(state.batches.status, batch_id, owner=caller.id)
    return JSONResponse(
        {"batch_id": batch_id, "started": started, "batch": info.info.to_dict()}, status_code=202
    )


async def _start(request: Request, principal: Principal, batch_id: str) -> bool:
    """Budget check (402 before any upstream call), then run in the background."""
    state = get_state(request)
    caller = principal.caller
    assert caller is not None
    if caller.upstream_key is None and state.settings.api_key is None:
        raise GenerationError(ErrorKind.NO_API_KEY, request_sent=False)
    await check_budget(state, caller, batch_id)
    return start_run(state, caller, batch_id, files_base_url=files_base_url(request))


@router.post(
    "/v1/jobs",
    operation_id="submit_job_rows",
    summary="提交批量任务（JSON 行） / Submit a batch as JSON rows",
    status_code=202,
    response_model=Submitted,
    responses={
        401: {"description": "service token required"},
        402: {"description": "budget"},
        422: {"description": "bad rows"},
    },
)
async def submit_rows(
    body: JobSubmission, request: Request, principal: Principal = Depends(require_caller)
) -> JSONResponse:
    rows = [{str(k): _cell(v) for k, v in row.items()} for row in body.rows]
    return await _create_and_start(request, principal, rows, None, _column_config(body.columns), body.name)


def _sniff_format(filename: str, data: bytes) -> Literal["csv", "xlsx", "jsonl"]:
    lowered = filename.lower()
    if data.startswith(_XLSX_MAGIC) or lowered.endswith(".xlsx"):
        return "xlsx"
    if lowered.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return "csv"


@router.post(
    "/v1/jobs/upload",
    operation_id="submit_job_file",
    summary="提交批量任务（上传 CSV/XLSX） / Submit a batch as a CSV/XLSX/JSONL upload",
    status_code=202,
    response_model=Submitted,
    responses={
        401: {"description": "service token required"},
        413: {"description": "too large"},
        422: {"description": "not a sheet"},
    },
)
async def submit_file(
    request: Request,
    file: UploadFile = File(..., description="CSV (UTF-8/GB18030), XLSX or JSONL"),
    name: str | None = Form(None, max_length=200),
    columns: str | None = Form(
        None, max_length=10_000, description="JSON object mapping roles to column names"
    ),
    principal: Principal = Depends(require_caller),
) -> JSONResponse:
    data = await file.read()
    if not data:
        raise _invalid("the uploaded file is empty")
    fmt = _sniff_format(file.filename or "", data)
    if fmt != "xlsx" and b"\x00" in data[:4096] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _invalid("the upload is not a CSV, XLSX or JSONL sheet")
    try:
        table = await asyncio.to_thread(read_table_bytes, data, fmt)
    except Exception as exc:  # noqa: BLE001 - any parser failure is the upload's fault
        raise _invalid(f"the upload is not a readable {fmt.upper()} sheet ({type(exc).__name__})") from None
    mapping: Columns | None = None
    if columns:
        try:
            mapping = Columns.model_validate(json.loads(columns))
        except (ValueError, ValidationError):
            raise _invalid('columns must be a JSON object such as {"prompt": "提示词"}') from None
    rows = [{k: v for k, v in row.items()} for row in table.rows]
    return await _create_and_start(
        request, principal, rows, table.header, _column_config(mapping), name or file.filename
    )


@router.get(
    "/v1/jobs", operation_id="list_jobs", summary="我的批量任务 / List my batches", response_model=BatchList
)
async def list_jobs(request: Request, principal: Principal = Depends(require_caller)) -> dict[str, Any]:
    state = get_state(request)
    assert state.batches is not None
    infos = await asyncio.to_thread(state.batches.list_batches, owner=principal.owner)
    return {"batches": [info.to_dict() for info in infos]}


async def _status(request: Request, batch_id: str, owner: str | None, *, previews: bool = False) -> Any:
    state = get_state(request)
    assert state.batches is not None
    try:
        status = await asyncio.to_thread(state.batches.status, batch_id, owner=owner, with_previews=previews)
    except BatchNotFound:
        raise not_found("batch") from None
    if owner is None or status.info.owner != owner:
        raise not_found("batch")
    return status


@router.get(
    "/v1/jobs/{batch_id}",
    operation_id="get_job",
    summary="批量任务状态与逐行结果 / Batch status with per-row results",
    responses={404: {"description": "unknown batch, or another caller's"}},
)
async def get_job(
    batch_id: str, request: Request, principal: Principal = Depends(require_caller)
) -> dict[str, Any]:
    status = await _status(request, batch_id, principal.owner)
    runs = get_state(request).batch_runs or {}
    return {**status.to_dict(), "running_here": batch_id in runs}


@router.get(
    "/v1/jobs/{batch_id}/export",
    operation_id="export_job",
    summary="导出结果表 / Export the sheet with result columns",
    response_class=Response,
    responses={
        200: {
            "content": {
                "text/csv": {},
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {},
            }
        }
    },
)
async def export_job(
    batch_id: str,
    request: Request,
    format: Literal["csv", "xlsx", "jsonl"] = Query("csv"),
    principal: Principal = Depends(require_caller),
) -> Response:
    state = get_state(request)
    assert state.batches is not None
    try:
        payload = await asyncio.to_thread(state.batches.export, batch_id, format, owner=principal.owner)
    except BatchNotFound:
        raise not_found("batch") from None
    media = {
        "csv": "text/csv; charset=utf-8",
        "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "jsonl": "application/x-ndjson",
    }[format]
    headers = {"Content-Disposition": f'attachment; filename="batch-{batch_id}.{format}"'}
    return Response(payload, media_type=media, headers=headers)


@router.post(
    "/v1/jobs/{batch_id}/retry",
    operation_id="retry_job",
    summary="重试失败行 / Retry failed rows",
    response_model=Changed,
    responses={404: {"description": "unknown batch, or another caller's"}, 402: {"description": "budget"}},
)
async def retry_job(
    batch_id: str, request: Request, principal: Principal = Depends(require_caller)
) -> dict[str, Any]:
    state = get_state(request)
    assert state.batches is not None
    await _status(request, batch_id, principal.owner)
    changed = await asyncio.to_thread(state.batches.retry_failed, batch_id, owner=principal.owner)
    started = await _start(request, principal, batch_id) if changed else False
    return {"batch_id": batch_id, "changed": changed, "started": started}


@router.post(
    "/v1/jobs/{batch_id}/cancel",
    operation_id="cancel_job",
    summary="取消排队中的行 / Cancel queued rows",
    response_model=Changed,
    responses={404: {"description": "unknown batch, or another caller's"}},
)
async def cancel_job(
    batch_id: str, request: Request, principal: Principal = Depends(require_caller)
) -> dict[str, Any]:
    state = get_state(request)
    assert state.batches is not None
    await _status(request, batch_id, principal.owner)
    changed = await asyncio.to_thread(state.batches.cancel, batch_id, owner=principal.owner)
    return {"batch_id": batch_id, "changed": changed}
