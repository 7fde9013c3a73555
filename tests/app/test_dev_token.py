"""The local dev token that signs webhooks without TWILIO_AUTH_TOKEN: never empty, never half
written, the same for every process that starts on one data directory."""

from __future__ import annotations

import logging
import multiprocessing
import os
from dataclasses import replace
from pathlib import Path

import pytest

from app import create_app
from app.settings import Settings
from app.webhook_auth import DEV_TOKEN_FILE, AuthTokenError, webhook_auth_token
from tests.support.app_harness import AppHarness
from tests.support.token_race import race_for_tokens

PROCESSES = 6
ROUNDS = 300  # the old create-then-write race showed within a few hundred


def test_processes_racing_at_start_all_get_the_one_complete_token(tmp_path: Path) -> None:
    dirs = [str(tmp_path / f"round-{n}") for n in range(ROUNDS)]
    context = multiprocessing.get_context("fork")  # the children start at once, modules loaded
    barrier, results = context.Barrier(PROCESSES), context.Queue()
    children = [
        context.Process(target=race_for_tokens, args=(dirs, barrier, results))
        for _ in range(PROCESSES)
    ]
    for child in children:
        child.start()
    got = [results.get(timeout=60) for _ in range(PROCESSES * ROUNDS)]
    for child in children:
        child.join(30)
        assert child.exitcode == 0

    for data_dir in dirs:
        tokens = {token for d, token in got if d == data_dir}
        on_disk = (Path(data_dir) / DEV_TOKEN_FILE).read_text()
        assert tokens == {on_disk}, (data_dir, tokens)  # one token, the file's, for everyone
        assert len(on_disk) == 32
        assert os.stat(Path(data_dir) / DEV_TOKEN_FILE).st_mode & 0o777 == 0o600
        assert sorted(os.listdir(data_dir)) == [DEV_TOKEN_FILE]  # no temporary file left


def test_an_empty_token_file_is_refused_at_start(harness: AppHarness, tmp_path: Path) -> None:
    # A process that died between creating the file and writing it: the app would check
    # signatures against the empty key, which anyone can compute.
    (tmp_path / DEV_TOKEN_FILE).write_text("")
    settings = replace(harness.settings, twilio_auth_token=None, data_dir=tmp_path)

    with pytest.raises(AuthTokenError, match=rf"{DEV_TOKEN_FILE} is empty"):
        create_app(settings, memory=harness.memory)
    assert harness.rows() == []


@pytest.mark.parametrize("content", ["\n", "short-token"])
def test_a_blank_or_short_token_file_is_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / DEV_TOKEN_FILE).write_text(content)
    with pytest.raises(AuthTokenError, match=rf"{DEV_TOKEN_FILE} is (empty|only \d+ char)"):
        webhook_auth_token(Settings(data_dir=tmp_path))


@pytest.mark.parametrize("token", ["", "   ", "too-short"])
def test_an_empty_or_short_twilio_auth_token_is_refused(tmp_path: Path, token: str) -> None:
    with pytest.raises(AuthTokenError, match="TWILIO_AUTH_TOKEN is"):
        webhook_auth_token(Settings(twilio_auth_token=token, data_dir=tmp_path))


def test_a_token_file_readable_by_others_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(data_dir=tmp_path)
    token = webhook_auth_token(settings)
    (tmp_path / DEV_TOKEN_FILE).chmod(0o644)
    caplog.set_level(logging.WARNING, logger="app.webhook_auth")

    assert webhook_auth_token(settings) == token
    [warning] = [r for r in caplog.records if "readable by other users" in r.getMessage()]
    assert "644" in warning.getMessage()
    assert token not in caplog.text
