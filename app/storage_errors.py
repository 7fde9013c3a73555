"""Storage failures as one short line naming the cause and the fix, instead of a traceback.

The commands (``hybrid-memory …``), ``serve``'s start-up checks and ``doctor`` use it. It reads
the chain of an exception (the library's ``StoreUnavailableError`` keeps the driver's error as
its cause) and recognises the usual first-run mistakes: a server that is not running, a wrong
database name, rejected credentials, tables that were never migrated.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import sqlalchemy as sa

from .schema_status import MIGRATE_FIX


def safe_database_url(url: str | None) -> str:
    """``url`` without its password: ``postgresql://app:***@host:5432/db``."""
    if not url:
        return "the embedded Postgres"
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparsable DATABASE_URL)"


def safe_redis_url(url: str | None) -> str:
    if not url:
        return "the embedded Redis"
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    db = parts.path or ""
    return f"{parts.scheme}://{host}:{parts.port or 6379}{db}"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)  # SQLAlchemy's wrapper → the driver's error
        if isinstance(orig, BaseException) and id(orig) not in seen:
            yield orig
            seen.add(id(orig))
        current = current.__cause__ or current.__context__


def _text(exc: BaseException) -> str:
    return " ".join(str(e) for e in _chain(exc))


def explain_postgres(exc: BaseException, database_url: str | None) -> str | None:
    """The cause and fix of a Postgres failure, or ``None`` if it is not one we recognise."""
    text = _text(exc)
    where = safe_database_url(database_url)
    try:
        user = sa.engine.make_url(database_url).username if database_url else None
    except Exception:
        user = None
    if match := re.search(r'database "([^"]+)" does not exist', text):
        return (
            f'Postgres has no database "{match.group(1)}" ({where}). Fix: create it '
            f"(createdb {match.group(1)}) or correct the database name in DATABASE_URL."
        )
    if match := re.search(r'relation "([^"]+)" does not exist', text):
        return f'the table "{match.group(1)}" is missing in {where}. Fix: {MIGRATE_FIX}.'
    if "password authentication failed" in text or re.search(r'role "[^"]+" does not exist', text):
        return (
            f"Postgres refused the user {user or '(none)'} ({where}). Fix: correct the user "
            "and password in DATABASE_URL."
        )
    if "could not translate host name" in text or "Name or service not known" in text:
        return f"the Postgres host of DATABASE_URL is unknown ({where}). Fix: correct the host."
    if (
        "Connection refused" in text
        or "could not connect" in text
        or "timeout expired" in text
        or "Postgres unavailable" in text
    ):
        return (
            f"cannot reach Postgres at {where}. Fix: start it, or point DATABASE_URL at a "
            "running server (unset DATABASE_URL and REDIS_URL to use the embedded servers)."
        )
    return None


def explain_redis(exc: BaseException, redis_url: str | None) -> str | None:
    """The cause and fix of a Redis failure, or ``None``."""
    import redis

    where = safe_redis_url(redis_url)
    for error in _chain(exc):
        if isinstance(error, redis.AuthenticationError) or "NOAUTH" in str(error):
            return f"Redis refused the credentials of REDIS_URL ({where}). Fix: correct them."
        if isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
            return (
                f"cannot reach Redis at {where}. Fix: start it, or point REDIS_URL at a running "
                "server (unset DATABASE_URL and REDIS_URL to use the embedded servers)."
            )
    return None


def explain(exc: BaseException, database_url: str | None, redis_url: str | None) -> str | None:
    """Whichever of the two recognises ``exc`` (Postgres first: it is the truth)."""
    import redis
    from sqlalchemy.exc import DBAPIError

    from lc_hybrid_memory import StoreUnavailableError

    chain = list(_chain(exc))
    if any(isinstance(e, (DBAPIError, StoreUnavailableError)) for e in chain):
        found = explain_postgres(exc, database_url)
        if found:
            return found
    if any(isinstance(e, redis.RedisError) for e in chain):
        return explain_redis(exc, redis_url)
    return None
