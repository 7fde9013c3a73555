"""The memory factory's type and the fault-injection process control of the tests.

The library's embedded servers (:mod:`lc_hybrid_memory.embedded`) start and stop; the tests
also kill, pause, resume and restart them, on servers of their own (``private_servers``).
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

from lc_hybrid_memory import HybridMemory
from lc_hybrid_memory.embedded import EmbeddedPostgres, EmbeddedRedis
from lc_hybrid_memory.testing import ServerURLs

__all__ = ["FaultyPostgres", "FaultyRedis", "MemoryFactory", "PrivateServers", "ServerURLs"]

MemoryFactory = Callable[..., HybridMemory]


class FaultyRedis(EmbeddedRedis):
    """A redis-server the test can crash, stall and restart on the same port."""

    def kill(self) -> None:
        """SIGKILL the server: a crash, nothing saved."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        self.reap(5.0)

    def pause(self) -> None:
        """SIGSTOP: the server holds its connections but answers nothing (a stall)."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self.signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop and start again on the same port (empty: no persistence)."""
        self.stop()
        self.start()


class FaultyPostgres(EmbeddedPostgres):
    """A PostgreSQL the test can stop (``fast`` or ``immediate``) and restart on the same port
    and data."""

    def restart(self) -> None:
        self.stop()
        self.start()


class PrivateServers:
    """Redis + Postgres of one test alone (not shared with other processes), to be faulted."""

    def __init__(self, data_dir: str | Path | None = None) -> None:
        # Default: a temporary directory outside pytest's, whose root every starting pytest
        # session makes private again (as root, Postgres runs as another user).
        self._temporary = data_dir is None
        self.data_dir = Path(
            tempfile.mkdtemp(prefix="hm-faults-") if data_dir is None else data_dir
        )
        self.redis = FaultyRedis(self.data_dir / "redis")
        self.postgres = FaultyPostgres(self.data_dir / "postgres")

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def database_url(self) -> str:
        return self.postgres.url

    def start(self) -> PrivateServers:
        self.postgres.start()
        try:
            self.redis.start()
        except BaseException:
            self.postgres.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop both, whatever state the test left them in (paused, stopped)."""
        self.redis.resume()
        self.redis.stop()
        if self.postgres.running():
            self.postgres.stop()
        if self._temporary:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> PrivateServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
