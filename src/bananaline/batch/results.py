"""What a batch produced, row by row, in the shapes the CLI, exports and the service share.

A row's status folds its jobs (one per variant): ``done`` when every variant is done (or
``stored_locally`` when an image only reached the local spool), ``failed``/``cancelled`` once all
are terminal and one is not done, else ``running``/``queued``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .models import (
    CANCELLED,
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    TERMINAL,
    BatchRecord,
    ImageRecord,
    JobRecord,
    RowRecord,
)

OUTPUT_COLUMNS = (
    "status",
    "image_url",
    "thumbnail_url",
    "error_kind",
    "error",
    "warnings",
    "attempts",
    "latency_s",
    "cost_usd",
)
ROW_TERMINAL = frozenset({"done", "stored_locally", "failed", "cancelled"})


@dataclass
class RowImage:
    sha256: str
    mime: str
    width: int
    height: int
    url: str | None
    thumbnail_url: str | None
    compressed_url: str | None
    storage_status: str | None


@dataclass
class RowResult:
    row_index: int
    cells: dict[str, str]
    caller: str
    status: str
    images: list[RowImage] = field(default_factory=list)
    error_kind: str | None = None
    error: str | None = None
    error_zh: str | None = None
    error_detail: str | None = None
    warnings: list[str] = field(default_factory=list)
    attempts: int = 0
    latency_s: float | None = None
    cost_usd: float | None = None
    prompt: str | None = None
    #: Small JPEG previews, one per image; only filled when asked for (exports, reports).
    previews: list[bytes] = field(default_factory=list, repr=False)

    @property
    def terminal(self) -> bool:
        return self.status in ROW_TERMINAL

    def output_cells(self) -> dict[str, str]:
        """The columns appended to the input row on write-back."""
        return {
            "status": self.status,
            "image_url": "\n".join(image.url or "" for image in self.images),
            "thumbnail_url": "\n".join(image.thumbnail_url or "" for image in self.images),
            "error_kind": self.error_kind or "",
            "error": self.error or "",
            "warnings": ",".join(self.warnings),
            "attempts": str(self.attempts),
            "latency_s": f"{self.latency_s:.2f}" if self.latency_s is not None else "",
            "cost_usd": f"{self.cost_usd:.4f}" if self.cost_usd is not None else "",
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("previews")
        return data


@dataclass
class BatchInfo:
    id: str
    name: str | None
    owner: str | None
    created_at: float
    row_count: int
    jobs_by_status: dict[str, int]

    @property
    def complete(self) -> bool:
        return not any(self.jobs_by_status.get(status) for status in (QUEUED, RUNNING))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "complete": self.complete}


@dataclass
class BatchStatus:
    info: BatchInfo
    header: list[str]
    rows: list[RowResult]

    @property
    def rows_by_status(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row.status] = counts.get(row.status, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.info.to_dict(),
            "header": self.header,
            "rows_by_status": self.rows_by_status,
            "rows": [row.to_dict() for row in self.rows],
        }


def batch_info(record: BatchRecord, jobs_by_status: dict[str, int]) -> BatchInfo:
    return BatchInfo(
        record.id, record.name, record.owner, record.created_at, record.row_count, jobs_by_status
    )


def fold_rows(
    rows: list[RowRecord], jobs: list[JobRecord], images: dict[int, list[ImageRecord]]
) -> list[RowResult]:
    jobs_by_row: dict[int, list[JobRecord]] = {}
    for job in jobs:
        jobs_by_row.setdefault(job.row_index, []).append(job)
    results = []
    for row in rows:
        row_jobs = sorted(jobs_by_row.get(row.row_index, []), key=lambda job: job.variant)
        row_images = [image for job in row_jobs for image in images.get(job.id, [])]
        plan = json.loads(row.plan_json) if row.plan_json else {}
        result = RowResult(
            row_index=row.row_index,
            cells=json.loads(row.cells_json),
            caller=row.caller,
            status=_row_status(row_jobs, row_images),
            images=[
                RowImage(
                    i.sha256,
                    i.mime,
                    i.width,
                    i.height,
                    i.url,
                    i.thumbnail_url,
                    i.compressed_url,
                    i.storage_status,
                )
                for i in row_images
            ],
            attempts=sum(job.attempts for job in row_jobs),
            prompt=plan.get("prompt"),
            previews=[i.preview for i in row_images if i.preview],
        )
        latencies = [job.latency_s for job in row_jobs if job.latency_s is not None]
        result.latency_s = max(latencies) if latencies else None
        costs = [job.cost_usd for job in row_jobs if job.cost_usd is not None]
        result.cost_usd = sum(costs) if costs else None
        for job in row_jobs:
            for code in json.loads(job.warnings_json) if job.warnings_json else []:
                if code not in result.warnings:
                    result.warnings.append(code)
        failed = next((job for job in row_jobs if job.status == FAILED), None)
        if failed is not None:
            result.error_kind, result.error = failed.error_kind, failed.error_message
            result.error_zh, result.error_detail = failed.error_message_zh, failed.error_detail
        results.append(result)
    return results


def _row_status(jobs: list[JobRecord], images: list[ImageRecord]) -> str:
    statuses = {job.status for job in jobs}
    if not statuses:
        return QUEUED
    if statuses == {DONE}:
        return "stored_locally" if any(i.storage_status == "stored_locally" for i in images) else "done"
    if statuses <= TERMINAL:
        return "cancelled" if statuses == {CANCELLED} else "failed"
    return RUNNING if RUNNING in statuses else QUEUED


def output_header(header: list[str]) -> tuple[list[str], dict[str, str]]:
    """Input columns, then the result columns (renamed ``bananaline_X`` if the input has an X)."""
    names = {name: (f"bananaline_{name}" if name in header else name) for name in OUTPUT_COLUMNS}
    return [*header, *names.values()], names


def output_rows(header: list[str], rows: list[RowResult]) -> tuple[list[str], list[dict[str, str]]]:
    full_header, names = output_header(header)
    out = []
    for row in rows:
        cells = {name: row.cells.get(name, "") for name in header}
        cells.update({names[key]: value for key, value in row.output_cells().items()})
        out.append(cells)
    return full_header, out
