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


def upgrade(url: str, revision: str = "head") -> None:
    """Run every pending migration on ``url`` in one connection."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            connection.commit()
    finally:
        engine.dispose()
