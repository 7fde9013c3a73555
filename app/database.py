"""The app's own Postgres engines: the conversations table, the readiness probe, migrations.

The memory (``lc_hybrid_memory``) has its engines, tuned for its one-conversation queries
(autocommit, bitmap scans off); the app's tables get engines of their own instead of
borrowing those. Every engine here hides SQL parameters in its errors (``hide_parameters``):
a failed statement's message never carries a message body or a phone number into the logs.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from lc_hybrid_memory import sync_url


def create_engine(database_url: str, *, connect_timeout: int, **options: Any) -> sa.Engine:
    """An engine of the app on ``database_url``: psycopg2, a bounded connect, no parameters
    in errors. ``options`` go to :func:`sqlalchemy.create_engine` (``poolclass``...)."""
    connect_args = {"connect_timeout": connect_timeout, **options.pop("connect_args", {})}
    return sa.create_engine(
        sync_url(database_url), hide_parameters=True, connect_args=connect_args, **options
    )
