"""Service tasks carry a lease, so a task whose process died is not ``running`` forever.

Revision ID: 0003_service_task_lease
Revises: 0002_service

Each service process renews ``lease_expires_at`` on the tasks it runs; a task whose lease ran out
(or whose process is gone from this host) is swept to a failed ``interrupted`` answer. Rows
written before this revision have no lease and count as expired: nobody renews them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_service_task_lease"
down_revision = "0002_service"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("service_tasks", sa.Column("lease_expires_at", sa.Float, nullable=True))
    op.create_index("ix_service_tasks_status", "service_tasks", ["status"])


def downgrade() -> None:
    op.drop_index("ix_service_tasks_status", table_name="service_tasks")
    with op.batch_alter_table("service_tasks") as batch:
        batch.drop_column("lease_expires_at")
