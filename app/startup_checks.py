"""What ``serve`` checks before it listens: Postgres reachable and migrated (without them every
webhook would fail), Redis reachable (without it the app still starts: the memory serves from
Postgres and webhooks answer with the apology until it is back)."""

from __future__ import annotations

import sqlalchemy as sa

from lc_hybrid_memory.store import sync_url

from .schema_status import MIGRATE_FIX, schema_status
from .storage_errors import explain_postgres, explain_redis
from .wiring import StorageURLs, redis_client

CHECK_TIMEOUT_SECONDS = 3


def storage_problems(urls: StorageURLs, *, cluster: bool = False) -> tuple[list[str], list[str]]:
    """``(errors, warnings)``: errors stop ``serve``, warnings are printed."""
    errors: list[str] = []
    warnings: list[str] = []
    engine = sa.create_engine(
        sync_url(urls.database_url),
        poolclass=sa.pool.NullPool,
        connect_args={"connect_timeout": CHECK_TIMEOUT_SECONDS},
    )
    try:
        with engine.connect() as conn:
            status = schema_status(conn)
        if not status.up_to_date:
            errors.append(f"the database is {status.describe()}. Fix: {MIGRATE_FIX}")
    except Exception as exc:
        errors.append(
            explain_postgres(exc, urls.database_url) or f"Postgres: {type(exc).__name__}: {exc}"
        )
    finally:
        engine.dispose()
    client = None
    try:
        # Inside the try: a cluster client connects (to learn the slots) when it is built.
        client = redis_client(urls.redis_url, cluster=cluster, timeout=CHECK_TIMEOUT_SECONDS)
        client.ping()
    except Exception as exc:
        reason = explain_redis(exc, urls.redis_url) or f"Redis: {type(exc).__name__}"
        warnings.append(
            f"{reason} Starting anyway: the memory reads Postgres meanwhile, webhooks get the "
            "apology until Redis answers (/readyz says so)."
        )
    finally:
        if client is not None:
            client.close()
    return errors, warnings
