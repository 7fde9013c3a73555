"""Embedded servers shared by several processes on one data directory (``make run`` next to
``make chat``, two ``make run``): they live while any user process lives, whichever exits
first and however (normal exit, Ctrl-C, SIGKILL), and no process stops servers another one
uses. ``make reset``'s stop command is refused while a process uses them."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import redis

from lc_hybrid_memory.embedded import EmbeddedServers
from lc_hybrid_memory.embedded.processes import pid_alive, port_open

REPO = Path(__file__).resolve().parents[2]


class User:
    """A ``tests.support.embedded_user`` process (its own process group, like a terminal's)."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.embedded_user", str(data_dir)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.info: dict[str, Any] = {}

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def readline(self, timeout: float = 60) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no answer; stderr: {Path(self.log.name).read_text()}") from None

    def ready(self) -> dict[str, Any]:
        self.info = json.loads(self.readline())
        return self.info

    def check(self) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write("check\n")
        self.proc.stdin.flush()
        return self.readline()

    def end(self, how: str) -> None:
        assert self.proc.stdin is not None
        if how == "exit":
            self.proc.stdin.write("exit\n")
            self.proc.stdin.flush()
        elif how == "ctrl-c":
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(60)
        self.log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def stop_command(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lc_hybrid_memory.embedded", "stop", str(data_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def servers_down(data_dir: Path, info: dict[str, Any]) -> bool:
    state = data_dir / "embedded.json"
    redis_port = int(info["redis_url"].rsplit(":", 1)[1].split("/")[0])
    postgres_port = int(info["database_url"].rsplit(":", 1)[1].split("/")[0])
    return not (state.exists() or port_open(redis_port) or port_open(postgres_port))


@pytest.mark.parametrize(
    ("first", "how"), [("started", "ctrl-c"), ("joined", "exit"), ("started", "kill")]
)
def test_two_processes_share_the_servers_whichever_ends_first(
    tmp_path: Path, first: str, how: str
) -> None:
    data_dir = tmp_path / "data"
    users = [User(data_dir, tmp_path / "a.log"), User(data_dir, tmp_path / "b.log")]
    try:
        infos = [user.ready() for user in users]  # both started at once: one pair of servers
        assert sorted(info["started"] for info in infos) == [False, True]
        assert infos[0]["redis_url"] == infos[1]["redis_url"]
        assert infos[0]["database_url"] == infos[1]["database_url"]
        assert [user.check() for user in users] == ["ok", "ok"]

        starter = next(user for user in users if user.info["started"])
        leaving = starter if first == "started" else next(u for u in users if u is not starter)
        staying = next(user for user in users if user is not leaving)
        leaving.end(how)
        assert staying.check() == "ok"
        refused = stop_command(data_dir)  # make reset, while a process uses them
        assert refused.returncode == 1 and "in use" in refused.stderr
        assert staying.check() == "ok"

        staying.end("exit")  # the last user: the servers stop with it
        assert servers_down(data_dir, staying.info)
        done = stop_command(data_dir)
        assert done.returncode == 0 and "no server running" in done.stdout
    finally:
        for user in users:
            user.kill()
        EmbeddedServers.stop_unused(data_dir)


def test_servers_left_by_a_killed_last_user_are_joined_then_stopped(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    killed = User(data_dir, tmp_path / "killed.log")
    try:
        info = killed.ready()
        killed.end("kill")  # no exit handler ran: the servers run on, used by nobody
        with EmbeddedServers(data_dir) as servers:
            assert not servers.started and servers.redis_url == info["redis_url"]
            assert redis.Redis.from_url(servers.redis_url).ping()
        assert servers_down(data_dir, info)
    finally:
        killed.kill()
        EmbeddedServers.stop_unused(data_dir)


def test_a_forked_child_never_stops_or_pins_the_servers(tmp_path: Path) -> None:
    servers = EmbeddedServers(tmp_path / "data").start()
    assert servers.redis is not None
    redis_pid = servers.redis.pid
    go_read, go_write = os.pipe()
    done_read, done_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child (an RQ work horse): "done" with them, then lives on a while
        servers.stop()
        os.write(done_write, b"1")
        os.read(go_read, 1)
        os._exit(0)
    try:
        os.read(done_read, 1)
        assert servers.redis.running()  # the child's stop() did nothing
        servers.stop()  # the parent, last user, while the child still runs
        assert not pid_alive(redis_pid)
        assert not (tmp_path / "data" / "embedded.json").exists()
    finally:
        os.write(go_write, b"1")
        os.waitpid(pid, 0)
        servers.stop()
        EmbeddedServers.stop_unused(tmp_path / "data")


def test_a_temporary_directory_is_removed_with_its_servers() -> None:
    with EmbeddedServers() as servers:
        data_dir = servers.data_dir
        assert redis.Redis.from_url(servers.redis_url).ping()
    assert not data_dir.exists()
