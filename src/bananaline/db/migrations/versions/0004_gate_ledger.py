"""Caller gates shared across processes: slots, rpm starts, AIMD state and budget reservations.

Revision ID: 0004_gate_ledger
Revises: 0003_service_task_lease

See ``bananaline.admission.ledger``: every process that shares this database enforces one set of
per-caller limits through these tables (slots and reservations are leased, like jobs).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_gate_ledger"
down_revision = "0003_service_task_lease"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gate_state",
        sa.Column("gate_key", sa.String(200), primary_key=True),
        sa.Column("effective", sa.Float, nullable=True),
        sa.Column("paused_until", sa.Float, nullable=False, server_default="0"),
        sa.Column("last_cut", sa.Float, nullable=False, server_default="0"),
    )
    op.create_table(
        "gate_slots",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("gate_key", sa.String(200), nullable=False),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_gate_slots_key", "gate_slots", ["gate_key"])
    op.create_index("ix_gate_slots_holder", "gate_slots", ["holder"])
    op.create_table(
        "gate_starts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("gate_key", sa.String(200), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
    )
    op.create_index("ix_gate_starts_key_at", "gate_starts", ["gate_key", "started_at"])
    op.create_table(
        "gate_reservations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("gate_key", sa.String(200), nullable=False),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("amount_usd", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_gate_reservations_key", "gate_reservations", ["gate_key"])


def downgrade() -> None:
    for table in ("gate_reservations", "gate_starts", "gate_slots", "gate_state"):
        op.drop_table(table)
