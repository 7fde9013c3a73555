"""The Redis and Postgres under test: embedded real servers by default, URLs when given."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Servers:
    redis_url: str
    database_url: str
    embedded: bool


def check_loopback(url: str) -> str:
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK:
        raise SystemExit(f"refusing non-loopback server {host!r} in {url!r}: the bench is local")
    return url


@contextmanager
def servers(results_dir: Path) -> Iterator[Servers]:
    """``BENCH_REDIS_URL`` + ``BENCH_DATABASE_URL`` if both are set, else embedded servers."""
    redis_url = os.environ.get("BENCH_REDIS_URL")
    database_url = os.environ.get("BENCH_DATABASE_URL")
    if redis_url and database_url:
        yield Servers(check_loopback(redis_url), check_loopback(database_url), embedded=False)
        return
    from lc_hybrid_memory.embedded import EmbeddedServers

    results_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="servers-", dir=results_dir))
    embedded = EmbeddedServers(data_dir, persistent=False).start()
    try:
        yield Servers(embedded.redis_url, embedded.database_url, embedded=True)
    finally:
        embedded.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
