"""HTTP service: callers, token hashes, plugin tasks, usage, stored files.

Revision ID: 0002_service
Revises: 0001_batch

Secrets never land in these tables in plain text: ``token_hash`` is a SHA-256 digest and
``upstream_key_enc`` a Fernet ciphertext keyed from ``BANANALINE_SECRET_KEY``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_service"
down_revision = "0001_batch"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "service_callers",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("upstream_key_enc", sa.Text, nullable=True),
        sa.Column("concurrency", sa.Integer, nullable=False),
        sa.Column("rpm", sa.Integer, nullable=True),
        sa.Column("budget_usd", sa.Float, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "service_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("caller_id", sa.String(32), sa.ForeignKey("service_callers.id"), nullable=False),
        sa.Column("hint", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
    )
    op.create_index("ix_service_tokens_caller_id", "service_tokens", ["caller_id"])
    op.create_table(
        "service_tasks",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner", sa.String(32), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request_json", sa.Text, nullable=False),
        sa.Column("response_json", sa.Text, nullable=True),
        sa.Column("instance_id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
    )
    op.create_index("ix_service_tasks_owner", "service_tasks", ["owner"])
    op.create_table(
        "service_usage",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("caller_id", sa.String(32), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("image_size", sa.String(8), nullable=True),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("error_kind", sa.String(40), nullable=True),
        sa.Column("images", sa.Integer, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
        sa.Column("elapsed_s", sa.Float, nullable=False),
        sa.Column("own_key", sa.Boolean, nullable=False),
        sa.Column("task_id", sa.String(40), nullable=True),
    )
    op.create_index("ix_service_usage_caller_time", "service_usage", ["caller_id", "created_at"])
    op.create_table(
        "service_files",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("caller_id", sa.String(32), nullable=True),
        sa.Column("key", sa.String(500), nullable=True),
        sa.Column("url", sa.Text, nullable=True),
        sa.Column("thumbnail_url", sa.Text, nullable=True),
        sa.Column("mime", sa.String(40), nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("bytes", sa.Integer, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("task_id", sa.String(40), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_service_files_caller_time", "service_files", ["caller_id", "created_at"])


def downgrade() -> None:
    for index, table in (
        ("ix_service_files_caller_time", "service_files"),
        ("ix_service_usage_caller_time", "service_usage"),
        ("ix_service_tasks_owner", "service_tasks"),
        ("ix_service_tokens_caller_id", "service_tokens"),
    ):
        op.drop_index(index, table_name=table)
    for table in ("service_files", "service_usage", "service_tasks", "service_tokens", "service_callers"):
        op.drop_table(table)
