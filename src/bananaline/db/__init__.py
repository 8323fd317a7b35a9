"""The shared database: one SQLAlchemy ``Base``, one engine factory, Alembic migrations."""

from .base import Base, make_engine, normalize_db_url
from .migrate import upgrade

__all__ = ["Base", "make_engine", "normalize_db_url", "upgrade"]
