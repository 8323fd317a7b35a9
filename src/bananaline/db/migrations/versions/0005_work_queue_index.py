"""The work queue's index: queued jobs by caller, oldest first.

Revision ID: 0005_work_queue_index
Revises: 0004_gate_ledger

``bananaline worker`` claims the oldest queued job of a caller across every batch
(``JobStore.claim(None, [caller])``: ``... WHERE status = 'queued' AND caller = ? ORDER BY id
LIMIT 1 FOR UPDATE SKIP LOCKED``). Without an index in that order each claim sorts every queued
job; this partial index holds the queued jobs only (it stays small however long the history is)
and hands the oldest one over in one index step, on PostgreSQL and SQLite alike.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_work_queue_index"
down_revision = "0004_gate_ledger"
branch_labels = None
depends_on = None

_QUEUED = sa.text("status = 'queued'")


def upgrade() -> None:
    op.create_index(
        "ix_batch_jobs_queued",
        "batch_jobs",
        ["caller", "id"],
        postgresql_where=_QUEUED,
        sqlite_where=_QUEUED,
    )


def downgrade() -> None:
    op.drop_index("ix_batch_jobs_queued", table_name="batch_jobs")
