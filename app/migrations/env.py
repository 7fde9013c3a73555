"""Alembic environment: online migrations only, serialised by a Postgres advisory lock.

The URL comes from the Alembic config (``hybrid-memory migrate`` sets it) or ``DATABASE_URL``.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context

from app.conversations import metadata as app_metadata
from app.database import create_engine
from app.settings import Settings
from lc_hybrid_memory import MessageTable

# Several processes may start at once (serve, worker, compose's migrate service): the lock makes
# the second one wait and then find the schema already at head.
MIGRATION_LOCK_KEY = 0x686D_6D69_6772  # "hmmigr"

config = context.config

# The target schema, for `alembic revision --autogenerate` and the schema test: the app's own
# tables plus the library's default messages table (the single source of truth for messages).
target_metadata = sa.MetaData()
for table in app_metadata.tables.values():
    table.to_metadata(target_metadata)
MessageTable().build(target_metadata)


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("no database URL: set DATABASE_URL")
    timeout = config.attributes.get("connect_timeout", Settings.database_connect_timeout_seconds)
    engine = create_engine(url, connect_timeout=timeout, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY}
            )
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported; run them online")
run_migrations_online()
