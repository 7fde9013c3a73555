"""``hybrid-memory send`` against live servers: an app served by werkzeug in a thread, and the
real ``hybrid-memory serve`` process (auto-migration, offline model) driven by the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
import requests
import sqlalchemy as sa
from flask import Flask
from werkzeug.serving import make_server

from app.commands import send
from app.webhook_auth import DEV_TOKEN_FILE
from lc_hybrid_memory import sync_url
from lc_hybrid_memory.embedded import free_port
from tests.support.app_harness import AppHarness, fake_model


def _serve_in_thread(app: Flask) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}/twilio/messages"
    finally:
        server.shutdown()
        thread.join(5)


def test_send_posts_a_signed_webhook_and_prints_the_reply(
    harness: AppHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    model = fake_model("Hi! I got your message.")
    for url in _serve_in_thread(harness.app(model)):
        status = send(harness.settings, "hello there", url=url)

    assert status == 0
    assert capsys.readouterr().out == "Hi! I got your message.\n"
    assert len(model.calls) == 1 and len(harness.rows()) == 2


def test_without_an_auth_token_serve_and_send_share_a_local_dev_token(
    harness: AppHarness, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    local = replace(harness.settings, twilio_auth_token=None, data_dir=tmp_path / "data")
    app = harness.app(fake_model("signed with the dev token"), twilio_auth_token=None,
                      data_dir=local.data_dir)  # fmt: skip
    token_file = local.data_dir / DEV_TOKEN_FILE
    assert token_file.stat().st_mode & 0o777 == 0o600
    stranger = replace(local, data_dir=tmp_path / "elsewhere")  # another machine's token

    for url in _serve_in_thread(app):
        assert send(local, "hello", url=url) == 0
        assert send(stranger, "hello", url=url) == 1  # signature checks were never off

    captured = capsys.readouterr()
    assert captured.out == "signed with the dev token\n"
    assert "HTTP 403" in captured.err


def test_serve_and_send_commands_end_to_end(
    servers, fresh_database_url: str, unique: str, tmp_path: Path
) -> None:
    port = free_port()
    env = dict(
        os.environ,
        DATABASE_URL=fresh_database_url,
        REDIS_URL=servers.redis_url,
        AUTO_MIGRATE="true",  # a fresh database: serve migrates it at start
        HYBRID_MEMORY_DATA_DIR=str(tmp_path),
        REDIS_KEY_PREFIX=f"test:{unique}:",
        PORT=str(port),
        REPLY_MODE="inline",
        TWILIO_AUTH_TOKEN="",
        TWILIO_ACCOUNT_SID="",
        PUBLIC_BASE_URL="",
        MODEL_PROVIDER="offline",
    )
    cli = [sys.executable, "-m", "app.cli"]
    server = subprocess.Popen(
        [*cli, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            assert server.poll() is None, server.stdout.read().decode() if server.stdout else ""
            assert time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.1)

        first = subprocess.run(
            [*cli, "send", "my name is Linus"], env=env, capture_output=True, text=True, timeout=30
        )
        second = subprocess.run(
            [*cli, "send", "what is my name?"], env=env, capture_output=True, text=True, timeout=30
        )
    finally:
        server.terminate()
        server.wait(10)
        _forget_redis_keys(servers.redis_url, fresh_database_url, f"test:{unique}:")

    assert first.returncode == 0, first.stderr
    assert first.stdout == "[offline model] Nice to meet you, Linus! I will remember that.\n"
    assert second.stdout == "[offline model] Your name is Linus.\n"


def _forget_redis_keys(redis_url: str, database_url: str, prefix: str) -> None:
    """The serve process's Redis keys: its turn states and its conversations' memory cache."""
    client = redis.Redis.from_url(redis_url)
    engine = sa.create_engine(sync_url(database_url))
    with engine.connect() as conn:
        ids = conn.exec_driver_sql("SELECT id FROM conversations").scalars().all()
    engine.dispose()
    keys = [*client.scan_iter(match=f"{prefix}*"), *(f"ai:memory:{{{i}}}" for i in ids)]
    if keys:
        client.delete(*keys)
    client.close()
