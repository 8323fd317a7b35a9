"""Alembic environment: uses the connection handed over by :func:`bananaline.db.migrate.upgrade`,
or builds one from ``config.attributes["db_url"]`` (never from an ini file)."""

from __future__ import annotations

from alembic import context

from bananaline.db.base import Base, make_engine

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(config.attributes["db_url"])
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("bananaline migrations run online only")
run_migrations_online()
