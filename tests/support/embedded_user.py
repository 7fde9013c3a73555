"""A process using the embedded servers of a data directory, driven over stdin/stdout by the
sharing tests: ``python -m tests.support.embedded_user DATA_DIR``.

Prints one JSON line (``redis_url``, ``database_url``, ``started``, ``pid``) once it uses the
servers, then answers each ``check`` line with ``ok`` (a Redis PING and a Postgres ``SELECT 1``
went through) or ``error: ...``. End of input, or ``exit``, ends it normally; SIGINT ends it like
Ctrl-C in a terminal.
"""

from __future__ import annotations

import json
import os
import sys

import redis
import sqlalchemy as sa

from lc_hybrid_memory.embedded import EmbeddedServers


def check(servers: EmbeddedServers) -> str:
    try:
        client = redis.Redis.from_url(servers.redis_url, socket_timeout=5)
        try:
            client.ping()
        finally:
            client.close()
        url = sa.engine.make_url(servers.database_url).set(drivername="postgresql+psycopg2")
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}".replace("\n", " ")
    return "ok"


def main() -> None:
    servers = EmbeddedServers(sys.argv[1]).start()  # stopped (or left to others) at exit
    print(
        json.dumps(
            {
                "redis_url": servers.redis_url,
                "database_url": servers.database_url,
                "started": servers.started,
                "pid": os.getpid(),
            }
        ),
        flush=True,
    )
    for line in sys.stdin:
        if line.strip() == "exit":
            break
        if line.strip() == "check":
            print(check(servers), flush=True)


if __name__ == "__main__":
    main()
