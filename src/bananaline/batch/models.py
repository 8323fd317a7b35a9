"""The batch tables. Times are Unix epoch seconds (``Float``): portable and trivially comparable.

Shape: a ``batches`` row per input (id = hash of its content), a ``batch_rows`` row per input row
(the cells, kept so exports need no input file, and the planned request), a ``batch_jobs`` row per
(row, variant) — the unit that is claimed, generated and finished — and a ``batch_images`` row per
delivered image, written in the same transaction that marks its job done.
"""

from __future__ import annotations

from sqlalchemy import (
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from ..db.base import Base

# job states
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
TERMINAL = frozenset({DONE, FAILED, CANCELLED})


class BatchRecord(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(255))
    owner: Mapped[str | None] = mapped_column(String(255), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    header_json: Mapped[str] = mapped_column(Text)
    columns_json: Mapped[str] = mapped_column(Text)
    row_count: Mapped[int] = mapped_column(Integer)


class RowRecord(Base):
    __tablename__ = "batch_rows"

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    row_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    cells_json: Mapped[str] = mapped_column(Text)
    caller: Mapped[str] = mapped_column(String(255), default="")
    #: GenerationRequest fields as JSON; NULL when the row itself is invalid (see plan_error_json).
    plan_json: Mapped[str | None] = mapped_column(Text)
    plan_error_json: Mapped[str | None] = mapped_column(Text)
    n: Mapped[int] = mapped_column(Integer, default=1)


class JobRecord(Base):
    __tablename__ = "batch_jobs"
    __table_args__ = (
        UniqueConstraint("batch_id", "row_index", "variant", name="uq_batch_jobs_row_variant"),
        ForeignKeyConstraint(
            ["batch_id", "row_index"], ["batch_rows.batch_id", "batch_rows.row_index"], ondelete="CASCADE"
        ),
        Index("ix_batch_jobs_batch_status", "batch_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(String(64))
    row_index: Mapped[int] = mapped_column(Integer)
    variant: Mapped[int] = mapped_column(Integer, default=0)
    caller: Mapped[str] = mapped_column(String(255), default="")
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    #: A fresh id per claim: a result is recorded only under the lease it was claimed with.
    lease_id: Mapped[str | None] = mapped_column(String(64))
    #: ``host:pid:run-token`` of the runner holding the lease (never anything secret).
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[float | None] = mapped_column(Float)
    claimed_at: Mapped[float | None] = mapped_column(Float)
    runs: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_kind: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_message_zh: Mapped[str | None] = mapped_column(Text)
    error_detail: Mapped[str | None] = mapped_column(Text)
    warnings_json: Mapped[str | None] = mapped_column(Text)
    latency_s: Mapped[float | None] = mapped_column(Float)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)


class ImageRecord(Base):
    __tablename__ = "batch_images"
    __table_args__ = (UniqueConstraint("job_id", "position", name="uq_batch_images_job_position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("batch_jobs.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    sha256: Mapped[str] = mapped_column(String(64))
    mime: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)
    url: Mapped[str | None] = mapped_column(Text)
    thumbnail_url: Mapped[str | None] = mapped_column(Text)
    compressed_url: Mapped[str | None] = mapped_column(Text)
    storage_status: Mapped[str | None] = mapped_column(String(32))
    #: A small JPEG (~128 px) so sheets and reports can show the picture without the store.
    preview: Mapped[bytes | None] = mapped_column(LargeBinary)
