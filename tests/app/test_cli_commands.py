"""The operator commands on real servers: ``conversations``, ``show ID|CONTACT``,
``chat --contact``, ``send``'s conversation id and its message when no app runs, ``serve``'s
start-up errors (port in use, database unreachable, not migrated) and its "serving on" line
printed only once the port is bound, one-line storage errors, and every command's ``--help``."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import sqlalchemy as sa
from langchain_core.messages import AIMessage, HumanMessage
from werkzeug.serving import make_server

from app import cli
from app.commands import migrate_database, send, serve
from app.conversations import Address, ConversationStore
from app.settings import Settings
from lc_hybrid_memory import HybridMemory, sync_url
from lc_hybrid_memory.embedded import free_port
from tests.support.app_harness import AppHarness, fake_model

COMMANDS = ("serve", "worker", "chat", "show", "conversations", "send", "migrate", "doctor")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_defaults_environment_and_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "environment:" in text and re.search(
        r"^examples?:\n  hybrid-memory|^examples?:\n  \w+=", text, re.M
    )
    assert "DATABASE_URL" in text or command == "send"
    options = text.split("options:\n", 1)[1].split("\n\nenvironment:", 1)[0]
    for entry in re.split(r"\n(?=  -)", options):
        if not entry.strip().startswith("-h, --help"):
            assert "default" in entry, f"{command}: {entry.split()[0]} does not say its default"


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch, servers: Any, fresh_database_url: str, tmp_path: Path
) -> Iterator[dict[str, str]]:
    """The CLI on this test's database (migrated) and the session's Redis."""
    migrate_database(fresh_database_url)
    env = {
        "DATABASE_URL": fresh_database_url,
        "REDIS_URL": servers.redis_url,
        "HYBRID_MEMORY_DATA_DIR": str(tmp_path),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("MODEL_PROVIDER", "MODEL_NAME", "CONSOLE_TOKEN", "PUBLIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    yield env
    # The CLI's memory uses the default key prefix: forget this database's conversations there.
    engine = sa.create_engine(sync_url(fresh_database_url))
    with engine.connect() as conn:
        ids = conn.exec_driver_sql("SELECT DISTINCT conversation_id FROM messages").scalars().all()
    engine.dispose()
    client = redis.Redis.from_url(servers.redis_url)
    keys = [key for sid in ids for key in client.scan_iter(match=f"ai:memory:{{{sid}}}*")]
    if keys:
        client.delete(*keys)
    client.close()


def _seed(env: dict[str, str], contact: str, texts: list[str], channel: str = "sms") -> str:
    memory = HybridMemory.from_urls(redis_url=env["REDIS_URL"], database_url=env["DATABASE_URL"])
    store = ConversationStore(memory.store.engine)
    conversation = store.resolve(Address(channel, contact), Address(channel, "+15550002222"))
    for n, text in enumerate(texts):
        memory.add_messages(
            conversation.id,
            [HumanMessage(text, id=f"SM{n:032x}"), AIMessage(f"re: {text}", id=f"SM{n:032x}:1")],
        )
    memory.get_messages(conversation.id)  # cached, as after a turn
    memory.close()
    return conversation.id


def test_conversations_lists_id_channel_contact_messages_activity_and_cache(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    first = _seed(cli_env, "+15550001111", ["hello", "again"])
    second = _seed(cli_env, "+15550003333", ["hi"], channel="whatsapp")
    assert cli.main(["conversations"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "ID",
        "CHANNEL",
        "CONTACT",
        "MESSAGES",
        "LAST",
        "ACTIVITY",
        "(UTC)",
        "CACHED",
    ]
    assert lines[1].split()[:4] == [second, "whatsapp", "+15550003333", "2"]
    assert lines[2].split()[:4] == [first, "sms", "+15550001111", "4"]
    assert "yes: 4 messages, ttl" in lines[2]

    assert cli.main(["conversations", "--search", "3333"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == [second]
    assert cli.main(["conversations", "--limit", "1"]) == 0
    assert "(more: --limit 2" in capsys.readouterr().out


def test_show_takes_an_id_or_a_contact(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    conversation = _seed(cli_env, "+15550001111", ["my question"])
    assert cli.main(["show", "+15550001111"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["     user  my question", "assistant  re: my question"]
    assert f"conversation {conversation} (sms +15550001111 → +15550002222): 2 messages" in (
        captured.err
    )
    assert cli.main(["show", conversation]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "     user  my question"

    assert cli.main(["show", "+15559990000"]) == 1
    assert "no conversation with +15559990000" in capsys.readouterr().err
    assert cli.main(["show", "nothing-here"]) == 1
    assert "hybrid-memory conversations" in capsys.readouterr().err

    _seed(cli_env, "+15550001111", ["on whatsapp"], channel="whatsapp")
    assert cli.main(["show", "+15550001111"]) == 1  # two conversations: name one
    assert "has 2 conversations" in capsys.readouterr().err
    assert cli.main(["show", "whatsapp:+15550001111"]) == 0
    assert "on whatsapp" in capsys.readouterr().out


def test_chat_contact_joins_that_conversation(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    conversation = _seed(cli_env, "+15550001111", ["my name is Grace"])
    monkeypatch.setattr("sys.stdin", io.StringIO("what is my name?\n"))
    assert cli.main(["chat", "--contact", "+15550001111"]) == 0
    out = capsys.readouterr().out
    assert f"joining conversation {conversation}" in out
    assert "bot> [offline model] Your name is Grace." in out  # the contact's memory
    memory = HybridMemory.from_urls(
        redis_url=cli_env["REDIS_URL"], database_url=cli_env["DATABASE_URL"]
    )
    assert memory.count(conversation) == 4
    assert memory.count("terminal") == 0  # not the default terminal session
    memory.close()

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert cli.main(["chat", "--contact", "+15550007777"]) == 1
    assert "no conversation with +15550007777" in capsys.readouterr().err


def test_storage_errors_are_one_line_with_cause_and_fix(
    cli_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    servers: Any,
) -> None:
    wrong = sa.engine.make_url(cli_env["DATABASE_URL"]).set(database="no_such_database")
    monkeypatch.setenv("DATABASE_URL", wrong.render_as_string(hide_password=False))
    assert cli.main(["show", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'no database "no_such_database"' in err and "Fix:" in err

    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/app")
    assert cli.main(["conversations"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach Postgres") and "Traceback" not in err

    # A database that only the library's create_schema() made: the app's table is missing.
    memory = HybridMemory.from_urls(
        redis_url=servers.redis_url, database_url=cli_env["DATABASE_URL"]
    )
    engine = memory.store.engine
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE conversations")
    memory.close()
    monkeypatch.setenv("DATABASE_URL", cli_env["DATABASE_URL"])
    assert cli.main(["conversations"]) == 1
    assert "no conversations table (not migrated)" in capsys.readouterr().err

    monkeypatch.setenv("REDIS_URL", "")
    assert cli.main(["conversations"]) == 2
    assert "set both DATABASE_URL and REDIS_URL, or neither" in capsys.readouterr().err


def test_send_prints_the_conversation_id_and_says_when_no_app_runs(
    harness: AppHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    app = harness.app(fake_model("hi there"))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        status = send(
            harness.settings, "hello", url=f"http://127.0.0.1:{server.port}/twilio/messages"
        )
    finally:
        server.shutdown()
        thread.join(5)
    assert status == 0
    captured = capsys.readouterr()
    [row] = harness.rows("conversations")
    assert captured.out == "hi there\n"
    assert f"(conversation {row['id']}: hybrid-memory show {row['id']})" in captured.err

    idle = Settings(port=free_port(), data_dir=harness.settings.data_dir)
    assert send(idle, "anyone?") == 1
    err = capsys.readouterr().err
    assert "no app answers at http://127.0.0.1:" in err and "make run" in err


def test_serve_refuses_a_busy_port_an_unreachable_or_unmigrated_database(
    servers: Any, fresh_database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = Settings(database_url=fresh_database_url, redis_url=servers.redis_url, data_dir=tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve(base, port=port) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is already in use" in err
    assert f"PORT={port + 1} make run" in err

    assert serve(base, port=free_port()) == 2  # not migrated, AUTO_MIGRATE unset
    err = capsys.readouterr().err
    assert "not migrated" in err and "hybrid-memory migrate" in err

    nowhere = Settings(
        database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/app",
        redis_url=servers.redis_url,
        data_dir=tmp_path,
    )
    assert serve(nowhere, port=free_port()) == 2
    assert "cannot reach Postgres" in capsys.readouterr().err


def test_serve_says_serving_only_once_bound_without_alembic_chatter(
    servers: Any, fresh_database_url: str, tmp_path: Path, unique: str
) -> None:
    port = free_port()
    env = dict(
        os.environ,
        DATABASE_URL=fresh_database_url,
        REDIS_URL=servers.redis_url,
        AUTO_MIGRATE="true",
        HYBRID_MEMORY_DATA_DIR=str(tmp_path),
        REDIS_KEY_PREFIX=f"test:{unique}:",
        PORT=str(port),
        CONSOLE_TOKEN="serve-test-token",
        REPLY_MODE="inline",
        TWILIO_AUTH_TOKEN="",
        TWILIO_ACCOUNT_SID="",
        MODEL_PROVIDER="offline",
        PYTHONUNBUFFERED="1",
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    try:
        assert server.stdout is not None
        for line in server.stdout:  # blocks until serve prints; ends if it exits
            seen.append(line)
            if line.startswith("serving on"):
                # Printed after the bind: the port accepts at once, no retry needed.
                with socket.create_connection(("127.0.0.1", port), timeout=10):
                    pass
                break
        assert seen and seen[-1].startswith(f"serving on http://127.0.0.1:{port}"), seen
        banner = "".join(seen) + "".join(server.stdout.readline() for _ in range(2))
        assert "Ctrl-C to stop" in banner
        assert (
            f"console:  http://127.0.0.1:{port}/console/   (sign in with CONSOLE_TOKEN)" in banner
        )
        assert "serve-test-token" not in banner  # a configured secret is never printed
        assert "setup plugin" not in "".join(seen)
        assert "Context impl" not in "".join(seen) and "Will assume" not in "".join(seen)
        assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
    finally:
        server.terminate()
        server.wait(10)
