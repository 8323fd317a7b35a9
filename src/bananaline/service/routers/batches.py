"""The batches API: the batch production line over HTTP, per caller (service token required).

Submit rows as JSON (``POST /v1/batches``) or a CSV/XLSX/JSONL upload (``POST /v1/batches/upload``);
the batch starts running at once. List, read status with per-row results, export the sheet with
result columns (CSV/XLSX/JSONL), retry failed rows, cancel queued ones. Another caller's batch id
answers 404, exactly like an unknown one.

One name, one meaning: a *batch* is a submitted sheet and a *job* is one of its rows' images (as in
``bananaline batch``). The first release called these routes ``/v1/jobs``; those paths still
answer, hidden from the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ...batch import BatchInputError, BatchNotFound, ColumnConfig, read_table_bytes
from ...batch.results import BatchStatus
from ...batch.sheet_limits import MAX_SHEET_ROWS, UPLOAD_LIMITS, SheetError, SheetTooLarge
from ...batch.sheets import cell_text
from ...batch.template import in_render_pool
from ...errors import ErrorKind, GenerationError
from ..auth import Caller
from ..batch_runs import check_budget, start_run
from ..deps import CallerDep, StateDep, files_base_url
from ..http_errors import ServiceError, not_found

router = APIRouter(tags=["batches"])

MAX_ROWS = MAX_SHEET_ROWS
_XLSX_MAGIC = b"PK\x03\x04"
_OLD_PREFIX, _PREFIX = "/v1/jobs", "/v1/batches"


def _route(method: str, path: str, **options: Any) -> Callable[[Any], Any]:
    """Register ``/v1/batches{path}`` and its first-release alias ``/v1/jobs{path}`` (hidden)."""

    def register(endpoint: Any) -> Any:
        router.add_api_route(_PREFIX + path, endpoint, methods=[method], **options)
        alias = {k: v for k, v in options.items() if k != "operation_id"}
        router.add_api_route(_OLD_PREFIX + path, endpoint, methods=[method], include_in_schema=False, **alias)
        return endpoint

    return register


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


class BatchSubmission(BaseModel):
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


async def _create_and_start(
    request: Request,
    state: StateDep,
    caller: Caller,
    rows: list[dict[str, str]],
    header: list[str] | None,
    columns: ColumnConfig,
    name: str | None,
) -> Submitted:
    """Both doors (JSON rows, upload) end here: one row limit, one bounded template render (on the
    renderers' own threads, never the event loop or the shared pool; over a bound it is a 422),
    one create, one budget check, one start."""
    if not rows:
        raise _invalid("the sheet has no rows")
    if len(rows) > MAX_ROWS:
        raise _invalid(f"at most {MAX_ROWS} rows per batch")
    # A templated batch renders inside create_batch (once, and only when the batch is new): on the
    # renderers' own threads, so a hostile template never holds the pool token checks share.
    run = in_render_pool if columns.template else asyncio.to_thread
    try:
        batch_id = await run(
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
    started = await _start(request, state, caller, batch_id)
    info = await asyncio.to_thread(state.batches.status, batch_id, owner=caller.id)
    return Submitted(batch_id=batch_id, started=started, batch=info.info.to_dict())


async def _start(request: Request, state: StateDep, caller: Caller, batch_id: str) -> bool:
    """Budget check (402 before any upstream call), then run in the background."""
    if caller.upstream_key is None and state.settings.api_key is None:
        raise GenerationError(ErrorKind.NO_API_KEY, request_sent=False)
    await check_budget(state, caller, batch_id)
    return start_run(state, caller, batch_id, files_base_url=files_base_url(request))


@_route(
    "POST",
    "",
    operation_id="submit_batch_rows",
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
    body: BatchSubmission, request: Request, state: StateDep, caller: CallerDep
) -> Submitted:
    rows = [{str(k): cell_text(v) for k, v in row.items()} for row in body.rows]
    return await _create_and_start(
        request, state, caller, rows, None, _column_config(body.columns), body.name
    )


def _sniff_format(filename: str, data: bytes) -> Literal["csv", "xlsx", "jsonl"]:
    lowered = filename.lower()
    if data.startswith(_XLSX_MAGIC) or lowered.endswith(".xlsx"):
        return "xlsx"
    if lowered.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return "csv"


@_route(
    "POST",
    "/upload",
    operation_id="submit_batch_file",
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
    state: StateDep,
    caller: CallerDep,
    file: UploadFile = File(..., description="CSV (UTF-8/GB18030), XLSX or JSONL"),
    name: str | None = Form(None, max_length=200),
    columns: str | None = Form(
        None, max_length=10_000, description="JSON object mapping roles to column names"
    ),
) -> Submitted:
    data = await file.read()
    if not data:
        raise _invalid("the uploaded file is empty")
    fmt = _sniff_format(file.filename or "", data)
    if fmt != "xlsx" and b"\x00" in data[:4096] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _invalid("the upload is not a CSV, XLSX or JSONL sheet")
    try:
        table = await asyncio.to_thread(read_table_bytes, data, fmt, limits=UPLOAD_LIMITS)
    except SheetTooLarge as exc:
        raise ServiceError(
            413, ErrorKind.PAYLOAD_TOO_LARGE, f"the sheet is too large: {exc}", f"表格过大：{exc}"
        ) from None
    except SheetError as exc:
        raise _invalid(f"the upload is not a readable {fmt.upper()} sheet: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is the upload's fault
        raise _invalid(f"the upload is not a readable {fmt.upper()} sheet ({type(exc).__name__})") from None
    mapping: Columns | None = None
    if columns:
        try:
            mapping = Columns.model_validate(json.loads(columns))
        except (ValueError, ValidationError):
            raise _invalid('columns must be a JSON object such as {"prompt": "提示词"}') from None
    rows = [dict(row) for row in table.rows]
    return await _create_and_start(
        request, state, caller, rows, table.header, _column_config(mapping), name or file.filename
    )


@_route(
    "GET", "", operation_id="list_batches", summary="我的批量任务 / List my batches", response_model=BatchList
)
async def list_batches(state: StateDep, caller: CallerDep) -> BatchList:
    infos = await asyncio.to_thread(state.batches.list_batches, owner=caller.id)
    return BatchList(batches=[info.to_dict() for info in infos])


async def _status(state: StateDep, batch_id: str, owner: str) -> BatchStatus:
    try:
        status = await asyncio.to_thread(state.batches.status, batch_id, owner=owner)
    except BatchNotFound:
        raise not_found("batch") from None
    if status.info.owner != owner:
        raise not_found("batch")
    return status


@_route(
    "GET",
    "/{batch_id}",
    operation_id="get_batch",
    summary="批量任务状态与逐行结果 / Batch status with per-row results",
    responses={404: {"description": "unknown batch, or another caller's"}},
)
async def get_batch(batch_id: str, state: StateDep, caller: CallerDep) -> dict[str, Any]:
    status = await _status(state, batch_id, caller.id)
    return {**status.to_dict(), "running_here": batch_id in state.batch_runs}


@_route(
    "GET",
    "/{batch_id}/export",
    operation_id="export_batch",
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
async def export_batch(
    batch_id: str,
    state: StateDep,
    caller: CallerDep,
    format: Literal["csv", "xlsx", "jsonl"] = Query("csv"),
) -> Response:
    try:
        payload = await asyncio.to_thread(state.batches.export, batch_id, format, owner=caller.id)
    except BatchNotFound:
        raise not_found("batch") from None
    media = {
        "csv": "text/csv; charset=utf-8",
        "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "jsonl": "application/x-ndjson",
    }[format]
    headers = {"Content-Disposition": f'attachment; filename="batch-{batch_id}.{format}"'}
    return Response(payload, media_type=media, headers=headers)


@_route(
    "POST",
    "/{batch_id}/retry",
    operation_id="retry_batch",
    summary="重试失败行 / Retry failed rows",
    response_model=Changed,
    responses={404: {"description": "unknown batch, or another caller's"}, 402: {"description": "budget"}},
)
async def retry_batch(batch_id: str, request: Request, state: StateDep, caller: CallerDep) -> Changed:
    await _status(state, batch_id, caller.id)
    changed = await asyncio.to_thread(state.batches.retry_failed, batch_id, owner=caller.id)
    started = await _start(request, state, caller, batch_id) if changed else False
    return Changed(batch_id=batch_id, changed=changed, started=started)


@_route(
    "POST",
    "/{batch_id}/cancel",
    operation_id="cancel_batch",
    summary="取消排队中的行 / Cancel queued rows",
    response_model=Changed,
    responses={404: {"description": "unknown batch, or another caller's"}},
)
async def cancel_batch(batch_id: str, state: StateDep, caller: CallerDep) -> Changed:
    await _status(state, batch_id, caller.id)
    changed = await asyncio.to_thread(state.batches.cancel, batch_id, owner=caller.id)
    return Changed(batch_id=batch_id, changed=changed)
