"""Batch production line: batches, rows, jobs, images.

Revision ID: 0001_batch
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_batch"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(255)),
        sa.Column("owner", sa.String(255)),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("header_json", sa.Text, nullable=False),
        sa.Column("columns_json", sa.Text, nullable=False),
        sa.Column("row_count", sa.Integer, nullable=False),
    )
    op.create_index("ix_batches_owner", "batches", ["owner"])
    op.create_table(
        "batch_rows",
        sa.Column(
            "batch_id", sa.String(64), sa.ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("row_index", sa.Integer, primary_key=True),
        sa.Column("cells_json", sa.Text, nullable=False),
        sa.Column("caller", sa.String(255), nullable=False),
        sa.Column("plan_json", sa.Text),
        sa.Column("plan_error_json", sa.Text),
        sa.Column("n", sa.Integer, nullable=False),
    )
    op.create_table(
        "batch_jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("row_index", sa.Integer, nullable=False),
        sa.Column("variant", sa.Integer, nullable=False),
        sa.Column("caller", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("lease_id", sa.String(64)),
        sa.Column("lease_owner", sa.String(255)),
        sa.Column("lease_expires_at", sa.Float),
        sa.Column("claimed_at", sa.Float),
        sa.Column("runs", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("error_kind", sa.String(32)),
        sa.Column("error_message", sa.Text),
        sa.Column("error_message_zh", sa.Text),
        sa.Column("error_detail", sa.Text),
        sa.Column("warnings_json", sa.Text),
        sa.Column("latency_s", sa.Float),
        sa.Column("cost_usd", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.UniqueConstraint("batch_id", "row_index", "variant", name="uq_batch_jobs_row_variant"),
        sa.ForeignKeyConstraint(
            ["batch_id", "row_index"], ["batch_rows.batch_id", "batch_rows.row_index"], ondelete="CASCADE"
        ),
    )
    op.create_index("ix_batch_jobs_batch_status", "batch_jobs", ["batch_id", "status"])
    op.create_table(
        "batch_images",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("batch_jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("mime", sa.String(64), nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("url", sa.Text),
        sa.Column("thumbnail_url", sa.Text),
        sa.Column("compressed_url", sa.Text),
        sa.Column("storage_status", sa.String(32)),
        sa.Column("preview", sa.LargeBinary),
        sa.UniqueConstraint("job_id", "position", name="uq_batch_images_job_position"),
    )
    op.create_index("ix_batch_images_job_id", "batch_images", ["job_id"])


def downgrade() -> None:
    op.drop_table("batch_images")
    op.drop_index("ix_batch_jobs_batch_status", "batch_jobs")
    op.drop_table("batch_jobs")
    op.drop_table("batch_rows")
    op.drop_index("ix_batches_owner", "batches")
    op.drop_table("batches")
