"""The pytest plugin library users enable with ``pytest_plugins = ["lc_hybrid_memory.testing"]``:
a user's test project run in a pytest subprocess (warnings are errors), on given servers and on
embedded ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from lc_hybrid_memory.testing import ServerURLs

USER_PROJECT = {
    "pytest.ini": "[pytest]\nasyncio_default_fixture_loop_scope = function\n",
    "conftest.py": 'pytest_plugins = ["lc_hybrid_memory.testing"]\n',
}

USER_TESTS = """
import json, os
from langchain_core.messages import AIMessage, HumanMessage

def record(memory, servers):
    with open(os.environ["PLUGIN_RECORD"], "a") as out:
        out.write(json.dumps({"table": memory.store.table.name, "prefix": memory.cache.prefix,
                              "embedded": servers.embedded, "redis_url": servers.redis_url}))
        out.write("\\n")

def test_a_memory_of_its_own(hybrid_memory, hybrid_memory_servers):
    record(hybrid_memory, hybrid_memory_servers)
    history = hybrid_memory.history("c1")
    history.add_messages([HumanMessage("hi", id="SM1"), AIMessage("hello", id="SM1:1")])
    assert [m.content for m in hybrid_memory.history("c1").messages] == ["hi", "hello"]

def test_nothing_of_the_other_test(hybrid_memory, hybrid_memory_servers):
    record(hybrid_memory, hybrid_memory_servers)
    assert hybrid_memory.history("c1").messages == []
"""

USER_ASYNC_TEST = """
import pytest
from langchain_core.messages import HumanMessage

@pytest.mark.asyncio
async def test_async(hybrid_memory):
    await hybrid_memory.history("c2").aadd_messages([HumanMessage("hey")])
    assert [m.content for m in await hybrid_memory.history("c2").aget_messages()] == ["hey"]
"""


def run_user_project(
    tmp_path: Path, tests: str, servers: ServerURLs | None
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, object]]]:
    project = tmp_path / "project"
    project.mkdir()
    for name, text in {**USER_PROJECT, "test_user.py": tests}.items():
        (project / name).write_text(text)
    record = tmp_path / "record.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEST_")}
    env["PLUGIN_RECORD"] = str(record)
    if servers is not None:
        env.update(TEST_REDIS_URL=servers.redis_url, TEST_DATABASE_URL=servers.database_url)
    result = subprocess.run(
        # --basetemp: pytest would otherwise make the shared /tmp/pytest-of-<user> private again.
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "error",
            "--basetemp",
            str(tmp_path / "basetemp"),
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    runs = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return result, runs


@pytest.mark.parametrize("given", [True, False], ids=["given-servers", "embedded"])
def test_users_tests_get_servers_and_an_isolated_memory(
    servers: ServerURLs, tmp_path: Path, given: bool
) -> None:
    result, runs = run_user_project(tmp_path, USER_TESTS, servers if given else None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    assert len({run["table"] for run in runs}) == 2 and len({run["prefix"] for run in runs}) == 2
    assert {run["embedded"] for run in runs} == {not given}
    if not given:  # the session's embedded servers went with the session (a temporary dir)
        return
    assert {run["redis_url"] for run in runs} == {servers.redis_url}
    url = sa.engine.make_url(servers.database_url).set(drivername="postgresql+psycopg2")
    engine = sa.create_engine(url)
    client = redis.Redis.from_url(servers.redis_url)
    try:
        for run in runs:  # each test's table and keys were removed after it
            assert not sa.inspect(engine).has_table(str(run["table"]))
            assert list(client.scan_iter(match=f"{run['prefix']}*")) == []
    finally:
        engine.dispose()
        client.close()


def test_an_async_user_test_leaves_no_unclosed_connection(
    servers: ServerURLs, tmp_path: Path
) -> None:
    result, _ = run_user_project(tmp_path, USER_ASYNC_TEST, servers)
    assert result.returncode == 0, result.stdout + result.stderr
