"""The job store: every state change of a batch is one short transaction here.

Durability rules that make ``kill -9`` harmless:

* claiming is ``queued -> running`` with a fresh ``lease_id`` in one transaction
  (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite);
* a result is recorded, images included, in the same transaction that moves the job to
  ``done``/``failed``, and only if the job still holds that lease;
* on start, jobs left ``running`` by a runner that is gone go back to ``queued``: its lease
  expired (runners renew theirs), or it ran on this host and its process no longer exists.

``batch_id=None`` (``claim``, ``queued_callers``, ``recover``, ``open_jobs``) means *the work
queue*: the jobs of every batch that no service caller owns (``bananaline batch submit`` / ``batch
run``), which any ``bananaline worker`` may run. A batch owned by a service caller is run by the
service, under that caller's key, budget and usage, never by a worker.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Engine, delete, func, insert, literal_column, select, update

from ..db.base import make_engine
from ..db.migrate import upgrade
from ..instances import known_gone, new_instance_id
from .models import (
    CANCELLED,
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    BatchRecord,
    ImageRecord,
    JobRecord,
    RowRecord,
)


@dataclass(frozen=True)
class NewRow:
    cells: dict[str, str]
    caller: str
    n: int
    plan: dict[str, Any] | None
    plan_error: dict[str, Any] | None


@dataclass(frozen=True)
class ClaimedJob:
    job_id: int
    lease_id: str
    row_index: int
    variant: int
    caller: str
    plan: dict[str, Any]
    batch_id: str


@dataclass
class ImageOutcome:
    sha256: str
    mime: str
    width: int
    height: int
    size_bytes: int
    url: str | None
    thumbnail_url: str | None
    compressed_url: str | None
    storage_status: str | None
    preview: bytes | None = field(default=None, repr=False)


@dataclass
class JobOutcome:
    ok: bool
    attempts: int = 0
    latency_s: float | None = None
    cost_usd: float | None = None
    warnings: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None
    images: list[ImageOutcome] = field(default_factory=list)


def new_run_token() -> str:
    return new_instance_id()


def _runner_gone(lease_owner: str | None) -> bool:
    return not lease_owner or known_gone(lease_owner)


#: ``'queued'`` written into the statement, not bound: a plan cached for a prepared statement
#: (psycopg prepares repeated statements) can then still use the partial index of queued jobs.
_QUEUED_LITERAL: ColumnElement[str] = literal_column(f"'{QUEUED}'")


def _in_scope(batch_id: str | None) -> ColumnElement[bool]:
    """Jobs of one batch, or (``None``) of the work queue: every batch no service caller owns."""
    if batch_id is not None:
        return JobRecord.batch_id == batch_id
    return JobRecord.batch_id.in_(select(BatchRecord.id).where(BatchRecord.owner.is_(None)))


class JobStore:
    """Repository over one database URL. Methods are synchronous and short; the engine calls them
    from a worker thread so the event loop never waits on disk or network."""

    def __init__(
        self, db_url: str | None = None, *, engine: Engine | None = None, migrate: bool = True
    ) -> None:
        """Own an engine for ``db_url`` (migrated first), or share a process's ``engine`` (whose
        owner migrated it at start-up and disposes of it)."""
        if engine is not None:
            self.engine, self._owns_engine = engine, False
            return
        if db_url is None:
            raise ValueError("JobStore needs a db_url or an engine")
        if migrate:
            upgrade(db_url)
        self.engine, self._owns_engine = make_engine(db_url), True

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    # batches -------------------------------------------------------------------------------

    def create_batch(
        self,
        batch_id: str,
        *,
        name: str | None,
        owner: str | None,
        header: list[str],
        columns_json: str,
        rows: Sequence[NewRow],
    ) -> bool:
        """Insert a batch with its rows and jobs; ``False`` when it already exists (resume)."""
        now = time.time()
        with self.engine.begin() as conn:
            if conn.execute(select(BatchRecord.id).where(BatchRecord.id == batch_id)).first():
                return False
            conn.execute(
                insert(BatchRecord).values(
                    id=batch_id,
                    name=name,
                    owner=owner,
                    created_at=now,
                    header_json=json.dumps(header, ensure_ascii=False),
                    columns_json=columns_json,
                    row_count=len(rows),
                )
            )
            if rows:
                conn.execute(
                    insert(RowRecord),
                    [
                        {
                            "batch_id": batch_id,
                            "row_index": index,
                            "caller": row.caller,
                            "n": row.n,
                            "cells_json": json.dumps(row.cells, ensure_ascii=False),
                            "plan_json": json.dumps(row.plan, ensure_ascii=False) if row.plan else None,
                            "plan_error_json": json.dumps(row.plan_error, ensure_ascii=False)
                            if row.plan_error
                            else None,
                        }
                        for index, row in enumerate(rows)
                    ],
                )
                conn.execute(
                    insert(JobRecord),
                    [
                        _new_job(batch_id, index, variant, row, now)
                        for index, row in enumerate(rows)
                        for variant in range(row.n)
                    ],
                )
        return True

    def get_batch(self, batch_id: str, *, owner: str | None = None) -> BatchRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(BatchRecord).where(BatchRecord.id == batch_id)).first()
        if row is None:
            return None
        record = BatchRecord(**row._mapping)
        if owner is not None and record.owner != owner:
            return None
        return record

    def list_batches(self, *, owner: str | None = None) -> list[BatchRecord]:
        stmt = select(BatchRecord).order_by(BatchRecord.created_at.desc())
        if owner is not None:
            stmt = stmt.where(BatchRecord.owner == owner)
        with self.engine.connect() as conn:
            return [BatchRecord(**row._mapping) for row in conn.execute(stmt)]

    def job_counts(self, batch_id: str) -> dict[str, int]:
        stmt = (
            select(JobRecord.status, func.count())
            .where(JobRecord.batch_id == batch_id)
            .group_by(JobRecord.status)
        )
        with self.engine.connect() as conn:
            return {status: count for status, count in conn.execute(stmt)}

    def spent_usd(self, batch_id: str) -> tuple[float, int]:
        """Money spent and images made so far (finished jobs only)."""
        with self.engine.connect() as conn:
            cost = conn.execute(
                select(func.coalesce(func.sum(JobRecord.cost_usd), 0.0)).where(JobRecord.batch_id == batch_id)
            ).scalar_one()
            images = conn.execute(
                select(func.count(ImageRecord.id))
                .join(JobRecord, JobRecord.id == ImageRecord.job_id)
                .where(JobRecord.batch_id == batch_id)
            ).scalar_one()
        return float(cost or 0.0), int(images)

    # the run -------------------------------------------------------------------------------

    def recover(self, batch_id: str | None, *, now: float | None = None) -> int:
        """Return to ``queued`` the running jobs whose runner is gone; how many."""
        now = time.time() if now is None else now
        with self.engine.begin() as conn:
            running = conn.execute(
                select(JobRecord.id, JobRecord.lease_owner, JobRecord.lease_expires_at).where(
                    _in_scope(batch_id), JobRecord.status == RUNNING
                )
            ).all()
            stale = [
                job_id
                for job_id, owner, expires in running
                if (expires is not None and expires < now) or _runner_gone(owner)
            ]
            for chunk in _chunks(stale, 500):
                conn.execute(
                    update(JobRecord)
                    .where(JobRecord.id.in_(chunk), JobRecord.status == RUNNING)
                    .values(status=QUEUED, lease_owner=None, lease_expires_at=None)
                )
        return len(stale)

    def pending_plans(self, batch_id: str) -> list[dict[str, Any]]:
        """The plan of every job still to run (one per image: a row with ``n=4`` has four)."""
        stmt = (
            select(RowRecord.plan_json)
            .join(
                JobRecord,
                (JobRecord.batch_id == RowRecord.batch_id) & (JobRecord.row_index == RowRecord.row_index),
            )
            .where(JobRecord.batch_id == batch_id, JobRecord.status.in_((QUEUED, RUNNING)))
        )
        with self.engine.connect() as conn:
            return [json.loads(plan) if plan else {} for plan in conn.execute(stmt).scalars()]

    def queued_callers(self, batch_id: str | None) -> set[str]:
        with self.engine.connect() as conn:
            return set(
                conn.execute(
                    select(JobRecord.caller).distinct().where(_in_scope(batch_id), JobRecord.status == QUEUED)
                ).scalars()
            )

    def open_jobs(self, batch_id: str | None) -> int:
        """Jobs still to do: queued, or running (a running job comes back if its runner dies)."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(JobRecord)
                    .where(_in_scope(batch_id), JobRecord.status.in_((QUEUED, RUNNING)))
                ).scalar_one()
            )

    def claim(
        self, batch_id: str | None, callers: Iterable[str], *, run_token: str, lease_s: float
    ) -> ClaimedJob | None:
        """Take the first queued job of one of ``callers`` (in ``batch_id``, or of any batch in the
        work queue: the oldest first); ``None`` when none is left."""
        caller_list = sorted(set(callers))
        if not caller_list:
            return None
        for _ in range(8):
            lease_id = uuid.uuid4().hex
            now = time.time()
            with self.engine.begin() as conn:
                candidate = conn.execute(
                    select(
                        JobRecord.id,
                        JobRecord.batch_id,
                        JobRecord.row_index,
                        JobRecord.variant,
                        JobRecord.caller,
                    )
                    .where(
                        _in_scope(batch_id),
                        JobRecord.status == _QUEUED_LITERAL,  # in the SQL text: the partial index applies
                        JobRecord.caller.in_(caller_list),
                    )
                    .order_by(
                        *(
                            (JobRecord.row_index, JobRecord.variant)
                            if batch_id is not None
                            else (JobRecord.id,)
                        )
                    )
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if candidate is None:
                    return None
                taken = conn.execute(
                    update(JobRecord)
                    .where(JobRecord.id == candidate.id, JobRecord.status == QUEUED)
                    .values(
                        status=RUNNING,
                        lease_id=lease_id,
                        lease_owner=run_token,
                        lease_expires_at=now + lease_s,
                        claimed_at=now,
                        runs=JobRecord.runs + 1,
                    )
                )
                if taken.rowcount != 1:
                    continue
                plan_json = conn.execute(
                    select(RowRecord.plan_json).where(
                        RowRecord.batch_id == candidate.batch_id, RowRecord.row_index == candidate.row_index
                    )
                ).scalar_one()
            return ClaimedJob(
                candidate.id,
                lease_id,
                candidate.row_index,
                candidate.variant,
                candidate.caller,
                json.loads(plan_json) if plan_json else {},
                candidate.batch_id,
            )
        return None

    def renew(self, run_token: str, *, lease_s: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(JobRecord)
                .where(JobRecord.lease_owner == run_token, JobRecord.status == RUNNING)
                .values(lease_expires_at=time.time() + lease_s)
            )

    def finish(self, job_id: int, lease_id: str, outcome: JobOutcome) -> bool:
        """Record the outcome and its images atomically; ``False`` if the lease was lost meanwhile."""
        error = outcome.error or {}
        with self.engine.begin() as conn:
            result = conn.execute(
                update(JobRecord)
                .where(JobRecord.id == job_id, JobRecord.lease_id == lease_id, JobRecord.status == RUNNING)
                .values(
                    status=DONE if outcome.ok else FAILED,
                    lease_owner=None,
                    lease_expires_at=None,
                    attempts=JobRecord.attempts + outcome.attempts,
                    latency_s=outcome.latency_s,
                    cost_usd=outcome.cost_usd,
                    finished_at=time.time(),
                    warnings_json=json.dumps(outcome.warnings) if outcome.warnings else None,
                    error_kind=error.get("kind"),
                    error_message=error.get("message"),
                    error_message_zh=error.get("message_zh"),
                    error_detail=error.get("detail"),
                )
            )
            if result.rowcount != 1:
                return False
            conn.execute(delete(ImageRecord).where(ImageRecord.job_id == job_id))
            if outcome.images:
                conn.execute(
                    insert(ImageRecord),
                    [
                        {"job_id": job_id, "position": position, **image.__dict__}
                        for position, image in enumerate(outcome.images)
                    ],
                )
        return True

    def release(self, lease_ids: Iterable[str]) -> int:
        """Give claimed jobs back to the queue (a hard stop)."""
        ids = list(lease_ids)
        count = 0
        with self.engine.begin() as conn:
            for chunk in _chunks(ids, 500):
                count += conn.execute(
                    update(JobRecord)
                    .where(JobRecord.lease_id.in_(chunk), JobRecord.status == RUNNING)
                    .values(status=QUEUED, lease_owner=None, lease_expires_at=None)
                ).rowcount
        return count

    def retry_failed(self, batch_id: str) -> int:
        """Requeue failed and cancelled jobs whose row can be planned (invalid rows stay failed)."""
        plannable = select(RowRecord.row_index).where(
            RowRecord.batch_id == batch_id, RowRecord.plan_json.is_not(None)
        )
        with self.engine.begin() as conn:
            job_ids = (
                conn.execute(
                    select(JobRecord.id).where(
                        JobRecord.batch_id == batch_id,
                        JobRecord.status.in_((FAILED, CANCELLED)),
                        JobRecord.row_index.in_(plannable),
                    )
                )
                .scalars()
                .all()
            )
            for chunk in _chunks(list(job_ids), 500):
                conn.execute(
                    update(JobRecord)
                    .where(JobRecord.id.in_(chunk))
                    .values(
                        status=QUEUED,
                        error_kind=None,
                        error_message=None,
                        error_message_zh=None,
                        error_detail=None,
                        finished_at=None,
                    )
                )
        return len(job_ids)

    def cancel(self, batch_id: str) -> int:
        with self.engine.begin() as conn:
            return conn.execute(
                update(JobRecord)
                .where(JobRecord.batch_id == batch_id, JobRecord.status == QUEUED)
                .values(status=CANCELLED, finished_at=time.time())
            ).rowcount

    # reading results -----------------------------------------------------------------------

    def load_results(
        self, batch_id: str, *, with_previews: bool = False
    ) -> tuple[list[RowRecord], list[JobRecord], dict[int, list[ImageRecord]]]:
        image_columns = [c for c in ImageRecord.__table__.columns if with_previews or c.name != "preview"]
        with self.engine.connect() as conn:
            rows = [
                RowRecord(**r._mapping)
                for r in conn.execute(
                    select(RowRecord).where(RowRecord.batch_id == batch_id).order_by(RowRecord.row_index)
                )
            ]
            jobs = [
                JobRecord(**r._mapping)
                for r in conn.execute(
                    select(JobRecord)
                    .where(JobRecord.batch_id == batch_id)
                    .order_by(JobRecord.row_index, JobRecord.variant)
                )
            ]
            images: dict[int, list[ImageRecord]] = {}
            for r in conn.execute(
                select(*image_columns)
                .join(JobRecord, JobRecord.id == ImageRecord.job_id)
                .where(JobRecord.batch_id == batch_id)
                .order_by(ImageRecord.position)
            ):
                images.setdefault(r.job_id, []).append(ImageRecord(**r._mapping))
        return rows, jobs, images


def _new_job(batch_id: str, index: int, variant: int, row: NewRow, now: float) -> dict[str, Any]:
    """Every job dict has the same keys: an executemany insert takes its columns from the first."""
    error = row.plan_error or {}
    return {
        "batch_id": batch_id,
        "row_index": index,
        "variant": variant,
        "caller": row.caller,
        "status": FAILED if row.plan_error else QUEUED,
        "runs": 0,
        "attempts": 0,
        "finished_at": now if row.plan_error else None,
        "error_kind": error.get("kind"),
        "error_message": error.get("message"),
        "error_message_zh": error.get("message_zh"),
        "error_detail": error.get("detail"),
    }


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
