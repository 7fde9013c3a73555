"""Process helpers of the embedded servers: free ports, liveness, bounded waits."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on ``127.0.0.1:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Poll until ``pid`` has exited; False if it still runs after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def retry_start(start: Callable[[], None], attempts: int) -> None:
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
