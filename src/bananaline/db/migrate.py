"""Bring a database to the newest schema, programmatically (no ``alembic.ini`` needed).

Every entry point calls :func:`upgrade` before touching tables, so a fresh SQLite file or an
empty PostgreSQL database just works and an old one is migrated forward.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from .base import make_engine, normalize_db_url

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ``%`` is Alembic's interpolation character; the URL is passed via attributes instead.
    config.attributes["db_url"] = normalize_db_url(url)
    return config


#: Any fixed number: the PostgreSQL advisory lock that lets one process at a time migrate.
_MIGRATION_LOCK = 0x62616E61


def upgrade(url: str, revision: str = "head") -> None:
    """Run every pending migration on ``url`` in one connection. On PostgreSQL, processes that
    start together (workers, ``serve --workers N``) take turns under an advisory lock, so the
    first migrates and the others find the schema current; SQLite's ``BEGIN IMMEDIATE`` already
    serialises them."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_lock({_MIGRATION_LOCK})")
                connection.commit()
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            connection.commit()
    finally:
        engine.dispose()
