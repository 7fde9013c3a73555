"""Redis + PostgreSQL of one data directory, shared by every process that uses it (see the
package's docstring for the locking protocol)."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .postgres_server import EmbeddedPostgres
from .processes import free_port, pid_alive, port_open
from .redis_server import EmbeddedRedis


class ServersInUseError(RuntimeError):
    """The servers of a data directory are used by another process."""


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


_user_locks: list[IO[str]] = []  # this process's user locks, closed in forked children
_fork_hook: list[bool] = []  # registered once per process


def _close_user_locks_in_child() -> None:
    # A forked child (an RQ work horse, a gunicorn worker) must not keep the servers alive
    # after its parent is done: closing its copy of the descriptor releases nothing of the
    # parent's lock, which belongs to the open file shared by both.
    for handle in _user_locks:
        with contextlib.suppress(OSError):
            handle.close()
    _user_locks.clear()


class EmbeddedServers:
    """Redis + PostgreSQL under one data directory, shared by every process that uses it.

    ``data_dir=None`` makes a temporary directory, removed when the servers stop. With
    ``persistent=True`` (``make run``) Redis saves its data and Postgres keeps fsync on.
    :meth:`start` joins the servers of the directory if they run (:attr:`started` is then
    False) or starts them; :meth:`stop` — also called at exit — stops them unless another
    process still uses them.
    """

    def __init__(self, data_dir: str | Path | None = None, *, persistent: bool = False) -> None:
        self._temporary = data_dir is None
        if data_dir is None:
            data_dir = tempfile.mkdtemp(prefix="lc-hybrid-memory-")
        self.data_dir = Path(data_dir).resolve()
        self.persistent = persistent
        self.state_file = self.data_dir / "embedded.json"
        self.redis: EmbeddedRedis | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.started = False
        self._user_lock: IO[str] | None = None
        self._user_pid: int | None = None

    @property
    def redis_url(self) -> str:
        assert self.redis is not None, "call start() first"
        return self.redis.url

    @property
    def database_url(self) -> str:
        assert self.postgres is not None, "call start() first"
        return self.postgres.url

    def _load_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def start(self) -> EmbeddedServers:
        """Join the servers of this data directory if they run, else start them."""
        if self._user_lock is not None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _locked(self.data_dir / "embedded.lock"):
            try:
                self._join_or_start()
            except BaseException:
                # Half started: stop what nobody uses (never another process's servers).
                with contextlib.suppress(ServersInUseError):
                    self._stop_unused()
                raise
            # Registered while the transition lock is held: no process can stop the servers
            # between the check above and this registration.
            handle = (self.data_dir / "embedded.users").open("a")
            fcntl.flock(handle, fcntl.LOCK_SH)
        self._user_lock, self._user_pid = handle, os.getpid()
        if not _fork_hook:
            os.register_at_fork(after_in_child=_close_user_locks_in_child)
            _fork_hook.append(True)
        _user_locks.append(handle)
        atexit.register(self.stop)
        return self

    def _join_or_start(self) -> None:
        state = self._load_state()
        self.postgres = EmbeddedPostgres(
            self.data_dir / "postgres", port=state.get("postgres_port"), durable=self.persistent
        )
        if not self.postgres.adopt():
            if port_open(self.postgres.port):
                self.postgres.port = free_port()  # the old port went to something else
            self.postgres.start()
            self.started = True
        self.redis = EmbeddedRedis(
            self.data_dir / "redis", port=state.get("redis_port"), persistent=self.persistent
        )
        self.redis.pid = state.get("redis_pid")
        if not self.redis.running():
            if port_open(self.redis.port):
                self.redis.port = free_port()
            self.redis.start()
            self.started = True
        self.state_file.write_text(
            json.dumps(
                {
                    "redis_port": self.redis.port,
                    "redis_pid": self.redis.pid,
                    "postgres_port": self.postgres.port,
                }
            )
        )

    def stop(self) -> None:
        """Done with the servers: stop them unless another process uses them. Idempotent; a
        forked child of the process that called :meth:`start` does nothing."""
        if self._user_lock is None or self._user_pid != os.getpid():
            return
        with _locked(self.data_dir / "embedded.lock"):
            with contextlib.suppress(ValueError):
                _user_locks.remove(self._user_lock)
            self._user_lock.close()
            self._user_lock = None
            atexit.unregister(self.stop)
            with contextlib.suppress(ServersInUseError):
                self._stop_unused()
        if self._temporary and not self.state_file.exists():
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _stop_unused(self) -> bool:
        """Under the transition lock: stop the servers if no process uses them."""
        with (self.data_dir / "embedded.users").open("a") as users:
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ServersInUseError(
                    f"the embedded servers under {self.data_dir} are in use by another process"
                ) from None
            state = self._load_state()
            if self.redis is None:
                self.redis = EmbeddedRedis(self.data_dir / "redis", port=state.get("redis_port"))
                self.redis.pid = state.get("redis_pid")
            if self.postgres is None:
                self.postgres = EmbeddedPostgres(self.data_dir / "postgres")
            redis_running, postgres_running = self.redis.running(), pid_alive(self.postgres.pid)
            if redis_running:
                self.redis.stop()
            if postgres_running:
                self.postgres.stop()
            with contextlib.suppress(OSError):
                self.state_file.unlink()
            return redis_running or postgres_running

    @classmethod
    def stop_unused(cls, data_dir: str | Path) -> bool:
        """Stop the servers of ``data_dir`` (started by any process) unless a process uses
        them (:class:`ServersInUseError`). True if servers were running."""
        servers = cls(data_dir)
        if not servers.data_dir.is_dir():
            return False
        with _locked(servers.data_dir / "embedded.lock"):
            return servers._stop_unused()

    def __enter__(self) -> EmbeddedServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
