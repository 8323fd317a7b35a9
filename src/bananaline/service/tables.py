"""The service's tables: callers, their token hashes, plugin tasks, usage and stored files.

Created by the Alembic migrations ``0002_service`` and ``0003_service_task_lease``; this module
is the SQLAlchemy Core description the repository queries against. Times are epoch seconds
(floats), so range queries are portable between SQLite and PostgreSQL. No column ever holds a
secret in plain text: tokens are SHA-256 digests, upstream keys are Fernet ciphertexts.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, ForeignKey, Index, Integer, String, Table, Text

from ..db.base import Base

#: The one metadata of every bananaline table (batch and service alike), under one Alembic history.
metadata = Base.metadata

callers = Table(
    "service_callers",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("upstream_key_enc", Text, nullable=True),
    Column("concurrency", Integer, nullable=False),
    Column("rpm", Integer, nullable=True),
    Column("budget_usd", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
)

tokens = Table(
    "service_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("caller_id", String(32), ForeignKey("service_callers.id"), nullable=False, index=True),
    Column("hint", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
)

tasks = Table(
    "service_tasks",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("owner", String(32), nullable=True, index=True),
    Column("kind", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("request_json", Text, nullable=False),
    Column("response_json", Text, nullable=True),
    Column("instance_id", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    # renewed by the running process (0003): past it, the task is swept to ``interrupted``
    Column("lease_expires_at", Float, nullable=True),
    Index("ix_service_tasks_status", "status"),
)

usage = Table(
    "service_usage",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("caller_id", String(32), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("source", String(32), nullable=False),
    Column("model", String(200), nullable=False),
    Column("image_size", String(8), nullable=True),
    Column("ok", Boolean, nullable=False),
    Column("error_kind", String(40), nullable=True),
    Column("images", Integer, nullable=False),
    Column("cost_usd", Float, nullable=False),
    Column("elapsed_s", Float, nullable=False),
    Column("own_key", Boolean, nullable=False),
    Column("task_id", String(40), nullable=True),
    Index("ix_service_usage_caller_time", "caller_id", "created_at"),
)

files = Table(
    "service_files",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("caller_id", String(32), nullable=True),
    Column("key", String(500), nullable=True),
    Column("url", Text, nullable=True),
    Column("thumbnail_url", Text, nullable=True),
    Column("mime", String(40), nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("source", String(32), nullable=False),
    Column("task_id", String(40), nullable=True),
    Column("created_at", Float, nullable=False),
    Index("ix_service_files_caller_time", "caller_id", "created_at"),
    Index("ix_service_files_task", "task_id"),
)
