"""The declarative base every table shares, and an engine factory that makes SQLite safe to share.

SQLite is the default store (``sqlite:///bananaline.db``) and must survive several writers
(a running batch and a ``batch status`` in another terminal) and ``kill -9`` at any moment:
WAL journal, a generous busy timeout, foreign keys on, and every transaction opened with
``BEGIN IMMEDIATE`` so a read-then-write transaction (claiming a job) never fails half way with
``database is locked`` but waits its turn. A new SQLite file is created ``0600`` (it holds
encrypted keys, token digests, prompts and spend); SQLite gives its ``-wal``/``-shm`` files the
same mode. PostgreSQL needs nothing special: the SQL is portable.

A URL this process cannot use (a driver that is not installed, an unknown dialect, a malformed
URL) is a :class:`DatabaseUrlError` whose message says what to do; the CLIs print it and exit 2.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import DeclarativeBase

SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_FILE_MODE = 0o600

#: Which extra installs the driver a backend needs.
_DRIVER_HINTS = {"postgresql": "pip install 'bananaline[postgres]'"}


class DatabaseUrlError(ValueError):
    """The database URL cannot be used by this installation; the message says how to fix it."""


class DatabaseDriverMissing(DatabaseUrlError):
    """The URL names a database whose Python driver is not installed."""


class Base(DeclarativeBase):
    """All tables of bananaline (batch jobs, later the service's)."""


def normalize_db_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` pick the installed psycopg 3 driver, not psycopg2."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, **engine_kwargs: Any) -> Engine:
    """An engine for ``url``; for SQLite file databases the parent directory is created and a new
    file is created ``0600``. Raises :class:`DatabaseUrlError` (or :class:`DatabaseDriverMissing`)
    for a URL this installation cannot use."""
    url = normalize_db_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseUrlError(f"not a database URL: {_safe(url)} ({exc})") from None
    if parsed.get_backend_name() != "sqlite":
        engine_kwargs.setdefault("pool_pre_ping", True)
        return _create(url, parsed.get_backend_name(), **engine_kwargs)
    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        _create_private_file(Path(database))
    connect_args = dict(engine_kwargs.pop("connect_args", {}))
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    connect_args.setdefault("check_same_thread", False)
    engine = _create(url, "sqlite", connect_args=connect_args, **engine_kwargs)
    _make_sqlite_safe(engine)
    return engine


def _create(url: str, backend: str, **engine_kwargs: Any) -> Engine:
    """``create_engine`` with its import and plugin failures translated at the boundary."""
    try:
        return create_engine(url, **engine_kwargs)
    except ImportError as exc:
        driver = exc.name or "its driver"
        hint = _DRIVER_HINTS.get(backend, f"install the {backend} driver that provides {driver!r}")
        raise DatabaseDriverMissing(
            f"the database URL {_safe(url)} needs the Python package {driver!r}, which is not installed: "
            f"{hint}"
        ) from None
    except ArgumentError as exc:  # NoSuchModuleError: an unknown dialect or driver name
        raise DatabaseUrlError(f"cannot use the database URL {_safe(url)}: {exc}") from None


def _safe(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def _create_private_file(path: Path) -> None:
    """Create the SQLite file owner-only before SQLite creates it with the process umask."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, SQLITE_FILE_MODE)
    except (FileExistsError, FileNotFoundError, NotADirectoryError):
        return  # an existing database keeps its mode; a bad path is SQLite's own error to report
    os.close(fd)


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
