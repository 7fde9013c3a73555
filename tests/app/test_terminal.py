"""``hybrid-memory chat`` / ``show`` end to end: the CLI, the offline model, real servers."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from app import cli


@pytest.fixture
def storage_env(
    monkeypatch: pytest.MonkeyPatch, servers: Any, fresh_database_url: str
) -> Iterator[None]:
    """DATABASE_URL/REDIS_URL of the test servers (a database of this test alone)."""
    monkeypatch.setenv("DATABASE_URL", fresh_database_url)
    monkeypatch.setenv("REDIS_URL", servers.redis_url)
    for name in ("MODEL_PROVIDER", "MODEL_NAME", "SYSTEM_PROMPT", "MEMORY_WINDOW"):
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.fixture
def session(redis_client: redis.Redis) -> Iterator[str]:
    sid = f"terminal-{uuid.uuid4().hex[:8]}"
    yield sid
    keys = list(redis_client.scan_iter(match=f"*{{{sid}}}*"))
    if keys:
        redis_client.delete(*keys)


def run_cli(monkeypatch: pytest.MonkeyPatch, argv: list[str], stdin: str = "") -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    # The CLI installs the app's log handler on the root logger, as a process would.
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    return cli.main(argv)


def test_chat_commands_and_memory_across_a_restart(
    storage_env: None,
    session: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    redis_client: redis.Redis,
) -> None:
    script = "Hi, my name is Ada\n\n/history\n/stats\n/nope\n"
    assert run_cli(monkeypatch, ["chat", "--session", session], script) == 0  # end of input
    out = capsys.readouterr().out
    assert "bot> [offline model] Nice to meet you, Ada! I will remember that." in out
    assert "     user  Hi, my name is Ada" in out
    assert "assistant  [offline model] Nice to meet you, Ada!" in out
    assert "hits=" in out and "misses=" in out
    assert "unknown command '/nope'" in out

    # A restart: a new process (new memory objects) and Redis has forgotten the conversation.
    keys = list(redis_client.scan_iter(match=f"*{{{session}}}*"))
    assert keys
    redis_client.delete(*keys)
    script = "what is my name?\n/quit\nnot read\n"
    assert run_cli(monkeypatch, ["chat", "--session", session], script) == 0
    out = capsys.readouterr().out
    assert "bot> [offline model] Your name is Ada." in out
    assert "not read" not in out

    assert run_cli(monkeypatch, ["show", session]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in shown] == ["user", "assistant", "user", "assistant"]
    assert run_cli(monkeypatch, ["show", session, "--limit", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == shown[-2:]


def test_chat_tools_clear_and_show(
    storage_env: None,
    session: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    script = "what time is it?\n/history\n/clear\n/history\n"
    assert run_cli(monkeypatch, ["chat", "--session", session], script) == 0
    out = capsys.readouterr().out
    assert "bot> [offline model] The current time is " in out
    assert "→ get_current_time({'timezone': 'UTC'})" in out
    assert "     tool  get_current_time: " in out
    assert "cleared 4 messages" in out
    assert out.rstrip().endswith("(no messages)")
    assert run_cli(monkeypatch, ["show", session]) == 1  # nothing stored any more
