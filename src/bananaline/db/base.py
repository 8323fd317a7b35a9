"""The declarative base every table shares, and an engine factory that makes SQLite safe to share.

SQLite is the default store (``sqlite:///bananaline.db``) and must survive several writers
(a running batch and a ``batch status`` in another terminal) and ``kill -9`` at any moment:
WAL journal, a generous busy timeout, foreign keys on, and every transaction opened with
``BEGIN IMMEDIATE`` so a read-then-write transaction (claiming a job) never fails half way with
``database is locked`` but waits its turn. PostgreSQL needs nothing special: the SQL is portable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase

SQLITE_BUSY_TIMEOUT_MS = 30_000


class Base(DeclarativeBase):
    """All tables of bananaline (batch jobs, later the service's)."""


def normalize_db_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` pick the installed psycopg 3 driver, not psycopg2."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, **engine_kwargs: Any) -> Engine:
    """An engine for ``url``; for SQLite file databases the parent directory is created."""
    url = normalize_db_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine_kwargs.setdefault("pool_pre_ping", True)
        return create_engine(url, **engine_kwargs)
    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    connect_args = dict(engine_kwargs.pop("connect_args", {}))
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    connect_args.setdefault("check_same_thread", False)
    engine = create_engine(url, connect_args=connect_args, **engine_kwargs)
    _make_sqlite_safe(engine)
    return engine


def _make_sqlite_safe(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see "begin" below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
