"""A fresh PostgreSQL schema per test module, on the local server (tests marked ``postgres``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextmanager
def fresh_postgres_schema(prefix: str) -> Iterator[tuple[str, str]]:
    """``(db_url, schema)``: a new schema on the local PostgreSQL server, dropped afterwards.

    Unreachable server: the test is skipped with a clear message, or failed where
    ``TEST_REQUIRE_POSTGRES=1`` (CI sets it), because there a skip would hide a gap.
    """
    from sqlalchemy import text

    from bananaline.db.base import make_engine

    try:
        admin = make_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with admin.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to connect means the same thing here
        message = f"PostgreSQL at 127.0.0.1:5432/test is unreachable: {exc.__class__.__name__}"
        if os.environ.get("TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin.begin() as conn:
        conn.execute(text(f'create schema "{schema}"'))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}", schema
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'drop schema "{schema}" cascade'))
        admin.dispose()
