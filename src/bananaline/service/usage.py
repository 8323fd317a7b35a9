"""Usage and stored-file records, always read back per caller: nobody sees another's rows."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Integer, cast, func, insert, select

from . import tables


@dataclass(frozen=True)
class UsageRecord:
    caller_id: str | None
    source: str
    model: str
    image_size: str | None
    ok: bool
    error_kind: str | None
    images: int
    cost_usd: float
    elapsed_s: float
    own_key: bool
    task_id: str | None = None


@dataclass(frozen=True)
class FileRecord:
    caller_id: str | None
    key: str | None
    url: str | None
    thumbnail_url: str | None
    mime: str
    width: int
    height: int
    bytes: int
    sha256: str
    source: str
    task_id: str | None = None


_FILE_FIELDS = (
    "url",
    "thumbnail_url",
    "mime",
    "width",
    "height",
    "bytes",
    "sha256",
    "source",
    "task_id",
    "created_at",
)


class UsageRepository:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def record(self, record: UsageRecord, files: list[FileRecord] | None = None) -> None:
        now = time.time()
        with self._engine.begin() as conn:
            conn.execute(insert(tables.usage).values(created_at=now, **record.__dict__))
            for file in files or []:
                conn.execute(insert(tables.files).values(created_at=now, **file.__dict__))

    def spent_usd(self, caller_id: str) -> float:
        """What the caller's own upstream key (the team's money) has cost so far."""
        u = tables.usage
        query = select(func.coalesce(func.sum(u.c.cost_usd), 0.0)).where(
            u.c.caller_id == caller_id, u.c.own_key.is_(False)
        )
        with self._engine.connect() as conn:
            return float(conn.execute(query).scalar_one())

    def summary(
        self, caller_id: str | None, *, since: float | None = None, until: float | None = None
    ) -> dict[str, Any]:
        """Totals and per-model breakdown for one caller (``None``: every caller, for operators)."""
        u = tables.usage
        conditions = []
        if caller_id is not None:
            conditions.append(u.c.caller_id == caller_id)
        if since is not None:
            conditions.append(u.c.created_at >= since)
        if until is not None:
            conditions.append(u.c.created_at < until)
        ok_count = func.sum(cast(u.c.ok, Integer))
        group_cols = [u.c.caller_id, u.c.model, u.c.image_size]
        query = (
            select(
                *group_cols,
                func.count().label("requests"),
                ok_count.label("succeeded"),
                func.coalesce(func.sum(u.c.images), 0).label("images"),
                func.coalesce(func.sum(u.c.cost_usd), 0.0).label("cost_usd"),
            )
            .where(*conditions)
            .group_by(*group_cols)
            .order_by(*group_cols)
        )
        errors_query = (
            select(u.c.error_kind, func.count().label("failures"))
            .where(*conditions, u.c.error_kind.is_not(None))
            .group_by(u.c.error_kind)
            .order_by(u.c.error_kind)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
            error_rows = conn.execute(errors_query).all()
        by_model = [
            {
                "caller_id": row.caller_id,
                "model": row.model,
                "image_size": row.image_size,
                "requests": int(row.requests),
                "succeeded": int(row.succeeded or 0),
                "images": int(row.images),
                "cost_usd": round(float(row.cost_usd), 6),
            }
            for row in rows
        ]
        return {
            "since": since,
            "until": until,
            "requests": sum(r["requests"] for r in by_model),
            "succeeded": sum(r["succeeded"] for r in by_model),
            "images": sum(r["images"] for r in by_model),
            "cost_usd": round(sum(r["cost_usd"] for r in by_model), 6),
            "errors": {row.error_kind: int(row.failures) for row in error_rows},
            "by_model": by_model,
        }

    def task_files(self, task_id: str) -> list[tuple[str, str]]:
        """``(key, mime)`` of the images a task stored, in the order they were made."""
        f = tables.files
        query = select(f.c.key, f.c.mime).where(f.c.task_id == task_id, f.c.key.is_not(None)).order_by(f.c.id)
        with self._engine.connect() as conn:
            return [(str(row.key), str(row.mime)) for row in conn.execute(query)]

    def files(self, caller_id: str, *, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        f = tables.files
        query = (
            select(f)
            .where(f.c.caller_id == caller_id)
            .order_by(f.c.created_at.desc(), f.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [{key: row[key] for key in _FILE_FIELDS} for row in rows]
