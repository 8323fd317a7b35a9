"""Caller limits shared by every process that uses one database: the gate ledger.

When several processes (``bananaline worker`` on many machines, ``serve --workers N``, two
``batch run`` in two terminals) share a job store, a caller's concurrency, rpm, slow-down after
429s and budget must hold across all of them, not per process. The ledger keeps that state in the
job store's own database — no second system to run — with the same leasing idea as the jobs:

* a *slot* row per upstream call in flight, leased (``expires_at``) and renewed by its holder, so
  a process killed with SIGKILL frees its slots when the lease runs out;
* a *start* row per upstream call started, for the moving 60 s rpm window;
* a *gate* row per caller with the AIMD state (effective concurrency, pause, last cut); every
  decision for a caller happens in one transaction that locks this row first (``FOR UPDATE`` on
  PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serialises writers already);
* a *reservation* row per budget reservation, leased like a slot.

Methods are synchronous and short; callers run them in a worker thread.
"""

from __future__ import annotations

import math
import time
import uuid

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Index,
    Integer,
    String,
    Table,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from ..db.base import Base
from ..instances import known_gone

RPM_WINDOW_S = 60.0

gates = Table(
    "gate_state",
    Base.metadata,
    Column("gate_key", String(200), primary_key=True),
    Column("effective", Float, nullable=True),
    Column("paused_until", Float, nullable=False, default=0.0),
    Column("last_cut", Float, nullable=False, default=0.0),
)

slots = Table(
    "gate_slots",
    Base.metadata,
    Column("id", String(32), primary_key=True),
    Column("gate_key", String(200), nullable=False),
    Column("holder", String(64), nullable=False),
    Column("expires_at", Float, nullable=False),
    Index("ix_gate_slots_key", "gate_key"),
    Index("ix_gate_slots_holder", "holder"),
)

starts = Table(
    "gate_starts",
    Base.metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("gate_key", String(200), nullable=False),
    Column("started_at", Float, nullable=False),
    Index("ix_gate_starts_key_at", "gate_key", "started_at"),
)

reservations = Table(
    "gate_reservations",
    Base.metadata,
    Column("id", String(32), primary_key=True),
    Column("gate_key", String(200), nullable=False),
    Column("holder", String(64), nullable=False),
    Column("amount_usd", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Index("ix_gate_reservations_key", "gate_key"),
)


class GateLedger:
    """The shared state of every caller gate, in one database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- one caller's transaction -------------------------------------------------------------

    def _lock(self, conn: Connection, key: str) -> tuple[float | None, float, float]:
        """Create the caller's gate row if needed and lock it; returns its AIMD state."""
        dialect = conn.dialect.name
        maker = pg_insert if dialect == "postgresql" else sqlite_insert if dialect == "sqlite" else None
        if maker is not None:
            conn.execute(
                maker(gates)
                .values(gate_key=key, effective=None, paused_until=0.0, last_cut=0.0)
                .on_conflict_do_nothing(index_elements=["gate_key"])
            )
        elif conn.execute(select(gates.c.gate_key).where(gates.c.gate_key == key)).first() is None:
            conn.execute(insert(gates).values(gate_key=key, effective=None, paused_until=0.0, last_cut=0.0))
        row = conn.execute(
            select(gates.c.effective, gates.c.paused_until, gates.c.last_cut)
            .where(gates.c.gate_key == key)
            .with_for_update()
        ).one()
        return row.effective, float(row.paused_until), float(row.last_cut)

    @staticmethod
    def _rpm_wait_s(conn: Connection, key: str, rpm: float | None, now: float) -> float:
        if not rpm:
            return 0.0
        window = RPM_WINDOW_S if rpm >= 1 else RPM_WINDOW_S * 60
        allowed = int(rpm) if rpm >= 1 else max(1, round(rpm * 60))
        conn.execute(delete(starts).where(starts.c.gate_key == key, starts.c.started_at <= now - window * 2))
        recent = (
            conn.execute(
                select(starts.c.started_at)
                .where(starts.c.gate_key == key, starts.c.started_at > now - window)
                .order_by(starts.c.started_at.desc())
                .limit(allowed)
            )
            .scalars()
            .all()
        )
        if len(recent) < allowed:
            return 0.0
        return max(0.001, float(recent[-1]) + window - now)

    # --- slots ----------------------------------------------------------------------------------

    def try_start(
        self,
        key: str,
        *,
        max_concurrency: int,
        rpm: float | None,
        holder: str,
        lease_s: float,
        count_request: bool = True,
    ) -> tuple[float, str | None]:
        """Take a slot (and count an rpm start) now, or say how long to wait: ``(0, slot_id)``,
        or ``(wait_s, None)`` with ``inf`` when only a finishing call can free a slot."""
        now = time.time()
        with self.engine.begin() as conn:
            effective, paused_until, _ = self._lock(conn, key)
            conn.execute(delete(slots).where(slots.c.gate_key == key, slots.c.expires_at < now))
            self._drop_dead_holders(conn, slots, key)
            held = conn.execute(
                select(func.count()).select_from(slots).where(slots.c.gate_key == key)
            ).scalar_one()
            cap = max(1, min(max_concurrency, int(effective) if effective is not None else max_concurrency))
            if held >= cap:
                return math.inf, None
            wait_s = max(0.0, paused_until - now)
            if count_request:
                wait_s = max(wait_s, self._rpm_wait_s(conn, key, rpm, now))
            if wait_s > 0:
                return wait_s, None
            slot_id = uuid.uuid4().hex
            conn.execute(
                insert(slots).values(id=slot_id, gate_key=key, holder=holder, expires_at=now + lease_s)
            )
            if count_request and rpm:
                conn.execute(insert(starts).values(gate_key=key, started_at=now))
            return 0.0, slot_id

    def take_request(self, key: str, rpm: float | None) -> float:
        """Count one admitted request in the rpm window: 0, or how long until one is allowed."""
        if not rpm:
            return 0.0
        now = time.time()
        with self.engine.begin() as conn:
            self._lock(conn, key)
            wait_s = self._rpm_wait_s(conn, key, rpm, now)
            if wait_s == 0:
                conn.execute(insert(starts).values(gate_key=key, started_at=now))
            return wait_s

    def finish(self, slot_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(slots).where(slots.c.id == slot_id))

    def renew(self, holder: str, lease_s: float) -> None:
        """Keep every slot and reservation of ``holder`` alive (its heartbeat)."""
        expires = time.time() + lease_s
        with self.engine.begin() as conn:
            conn.execute(update(slots).where(slots.c.holder == holder).values(expires_at=expires))
            conn.execute(
                update(reservations).where(reservations.c.holder == holder).values(expires_at=expires)
            )

    def release_holder(self, holder: str) -> None:
        """A clean stop: give back whatever ``holder`` still has."""
        with self.engine.begin() as conn:
            conn.execute(delete(slots).where(slots.c.holder == holder))
            conn.execute(delete(reservations).where(reservations.c.holder == holder))

    def in_flight(self, key: str) -> int:
        now = time.time()
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(slots)
                    .where(slots.c.gate_key == key, slots.c.expires_at >= now)
                ).scalar_one()
            )

    # --- upstream feedback (AIMD, shared) -------------------------------------------------------

    def feedback(
        self,
        key: str,
        *,
        rate_limited: bool,
        max_concurrency: int,
        retry_after_s: float | None = None,
        default_pause_s: float = 1.0,
    ) -> None:
        """A 429 halves the caller's effective concurrency everywhere (once per cool-down) and
        pauses it; a success adds back ``1/effective``."""
        now = time.time()
        with self.engine.begin() as conn:
            effective, paused_until, last_cut = self._lock(conn, key)
            current = float(effective) if effective is not None else float(max_concurrency)
            values: dict[str, float | None]
            if rate_limited:
                pause_s = retry_after_s if retry_after_s and retry_after_s > 0 else default_pause_s
                values = {"paused_until": max(paused_until, now + pause_s)}
                if now - last_cut >= max(pause_s, default_pause_s):
                    values.update(effective=max(1.0, current / 2.0), last_cut=now)
            elif current < max_concurrency:
                grown = min(float(max_concurrency), current + 1.0 / current)
                values = {"effective": None if grown >= max_concurrency else grown}
            else:
                return
            conn.execute(update(gates).where(gates.c.gate_key == key).values(**values))

    # --- budget ------------------------------------------------------------------------------------

    @staticmethod
    def _drop_dead_holders(conn: Connection, table: Table, key: str) -> None:
        """What a process that is certainly dead (SIGKILL on this machine) held is free at once,
        without waiting for its lease: the same liveness rule as job leases (``instances``)."""
        holders = conn.execute(select(table.c.holder).where(table.c.gate_key == key).distinct()).scalars()
        gone = [holder for holder in holders if known_gone(holder)]
        if gone:
            conn.execute(delete(table).where(table.c.gate_key == key, table.c.holder.in_(gone)))

    def reserved_usd(self, conn: Connection, key: str, now: float) -> float:
        conn.execute(
            delete(reservations).where(reservations.c.gate_key == key, reservations.c.expires_at < now)
        )
        self._drop_dead_holders(conn, reservations, key)
        total = conn.execute(
            select(func.coalesce(func.sum(reservations.c.amount_usd), 0.0)).where(
                reservations.c.gate_key == key
            )
        ).scalar_one()
        return float(total or 0.0)

    def reserve(
        self,
        key: str,
        *,
        budget_usd: float,
        spent_usd: float,
        estimate_usd: float,
        holder: str,
        lease_s: float,
    ) -> tuple[str | None, float]:
        """Reserve ``estimate_usd`` if the budget holds it: ``(reservation_id, reserved_before)``;
        ``(None, reserved_before)`` when it does not."""
        now = time.time()
        with self.engine.begin() as conn:
            self._lock(conn, key)
            reserved = self.reserved_usd(conn, key, now)
            if spent_usd + reserved + estimate_usd > budget_usd + 1e-9:
                return None, reserved
            reservation_id = uuid.uuid4().hex
            conn.execute(
                insert(reservations).values(
                    id=reservation_id,
                    gate_key=key,
                    holder=holder,
                    amount_usd=estimate_usd,
                    expires_at=now + lease_s,
                )
            )
            return reservation_id, reserved

    def current_reserved_usd(self, key: str) -> float:
        with self.engine.begin() as conn:
            return self.reserved_usd(conn, key, time.time())

    def release_reservation(self, reservation_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(reservations).where(reservations.c.id == reservation_id))
