"""Stored files by task: the MCP door's ``get_task`` reads a task's images by their keys.

Revision ID: 0006_files_task_index
Revises: 0005_work_queue_index
"""

from __future__ import annotations

from alembic import op

revision = "0006_files_task_index"
down_revision = "0005_work_queue_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_service_files_task", "service_files", ["task_id"])


def downgrade() -> None:
    op.drop_index("ix_service_files_task", table_name="service_files")
