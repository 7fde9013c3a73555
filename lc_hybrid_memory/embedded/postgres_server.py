"""An embedded PostgreSQL (pgserver's binaries: PostgreSQL 16 with pgvector) on a loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
import warnings
from pathlib import Path
from types import ModuleType

from .processes import free_port, pid_alive, port_open, retry_start, wait_for_exit

# pg_ctl's shutdown modes, as the signals the postmaster understands.
SHUTDOWN_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


def _pgserver() -> ModuleType:
    """The pgserver package. Its import warns (deprecated APIs, no XDG_RUNTIME_DIR) about
    nothing the caller can act on, which breaks test suites run with ``-W error``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
        import pgserver.utils

    return pgserver


class EmbeddedPostgres:
    """A PostgreSQL server (pgserver's binaries) on ``127.0.0.1:<port>`` with trust auth.

    ``durable=False`` (tests) turns off fsync for speed; ``make run`` keeps it on. ``pg_ctl``
    starts the postmaster in a session of its own.
    """

    def __init__(
        self, data_dir: str | Path, *, port: int | None = None, durable: bool = False
    ) -> None:
        self.data_dir = Path(data_dir)
        self.pgdata = self.data_dir / "pgdata"
        self.port = port or free_port()
        self.durable = durable
        # initdb and postgres refuse to run as root: then they run as pgserver's system user.
        self._system_user: str | None = "pgserver" if os.geteuid() == 0 else None

    @staticmethod
    def bin_dir() -> Path:
        """Directory of the PostgreSQL executables shipped by pgserver."""
        return Path(_pgserver().__file__).parent / "pginstall" / "bin"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, exe: str, args: list[str], timeout: float = 60) -> None:
        cmd = [str(self.bin_dir() / exe), *args]
        result = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, user=self._system_user
        )
        if result.returncode != 0:
            log = self.data_dir / "postgres.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{exe} failed: {result.stderr.strip()}\n{tail}")

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # initdb and postgres refuse to run as root; pgserver's helpers make a system user.
            import pwd
            import stat

            utils = _pgserver().utils
            ensure_folder_permissions = utils.ensure_folder_permissions
            ensure_prefix_permissions = utils.ensure_prefix_permissions
            ensure_user_exists = utils.ensure_user_exists

            assert self._system_user is not None
            ensure_user_exists(self._system_user)
            ensure_prefix_permissions(self.data_dir)
            ensure_prefix_permissions(self.bin_dir())
            read = stat.S_IRGRP | stat.S_IROTH
            ensure_folder_permissions(self.bin_dir(), read | stat.S_IXGRP | stat.S_IXOTH)
            ensure_folder_permissions(self.bin_dir().parent / "lib", read)
            entry = pwd.getpwnam(self._system_user)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
            for path in self.data_dir.iterdir():
                if path.name != "pgdata":
                    os.chown(path, entry.pw_uid, entry.pw_gid)
        if not (self.pgdata / "PG_VERSION").exists():
            self._run(
                "initdb",
                ["-D", str(self.pgdata), "--auth=trust", "--encoding=utf8", "-U", "postgres"],
            )

    def start(self, timeout: float = 60.0, attempts: int = 3) -> None:
        """initdb if needed, start the server and wait until it accepts connections."""
        retry_start(lambda: self._start(timeout), attempts)

    def _start(self, timeout: float) -> None:
        self._prepare()
        options = [
            "-h 127.0.0.1",
            f"-p {self.port}",
            "-c unix_socket_directories=''",
            "-c max_connections=200",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(
            "pg_ctl",
            [
                "-D", str(self.pgdata),
                "-w", "-t", str(int(timeout)),
                "-l", str(self.data_dir / "postgres.log"),
                "-o", " ".join(options),
                "start",
            ],
            timeout=timeout + 10,
        )  # fmt: skip

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Stop the server (``fast``: roll back sessions; ``immediate``: like a crash).

        What ``pg_ctl stop`` does — the shutdown signal to the postmaster, then wait — without
        needing access to the data directory as the server's user.
        """
        pid = self.pid
        if not pid_alive(pid):
            return
        assert pid is not None
        os.kill(pid, SHUTDOWN_SIGNALS[mode])
        if not wait_for_exit(pid, timeout):
            raise RuntimeError(f"PostgreSQL (pid {pid}) did not stop within {timeout} s")

    def _lock_file_fields(self) -> list[str]:
        try:
            return (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return []

    @property
    def pid(self) -> int | None:
        """The running postmaster's pid, from its lock file."""
        fields = self._lock_file_fields()
        try:
            return int(fields[0])
        except (ValueError, IndexError):
            return None

    def adopt(self) -> bool:
        """Take the port of a postmaster already running on this data directory, if any."""
        fields = self._lock_file_fields()
        try:
            pid, port = int(fields[0]), int(fields[3])
        except (ValueError, IndexError):
            return False
        if pid_alive(pid) and port_open(port):
            self.port = port
            return True
        return False

    def running(self) -> bool:
        return pid_alive(self.pid) and port_open(self.port)
