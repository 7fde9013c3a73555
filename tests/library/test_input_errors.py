"""Permanent errors are not outages: precise exceptions that name the field, nothing written,
and no message text in what is logged."""

from __future__ import annotations

import json
import logging
import traceback

import pytest
import sqlalchemy as sa
from langchain_core.messages import HumanMessage

from lc_hybrid_memory import (
    HybridMemory,
    InvalidMessageError,
    StoreConfigurationError,
    StoreUnavailableError,
)
from lc_hybrid_memory.records import EncodedMessage
from tests.support.memory_checks import table_rows
from tests.support.servers import MemoryFactory, PrivateServers

SECRET = "TOPSECRET-BODY-4242 my card number"


def test_an_overlong_message_id_is_refused_before_anything_is_written(
    memory: HybridMemory,
) -> None:
    with pytest.raises(InvalidMessageError, match="id must be a string of at most 256"):
        memory.add_messages(
            "c", [HumanMessage("ok", id="fine"), HumanMessage("x", id="i" * 10_000)]
        )
    assert table_rows(memory, "c") == []


@pytest.mark.parametrize("window", [0, -1, 2**63, 2**31, 1.5, True])
def test_a_window_out_of_range_is_a_value_error(memory: HybridMemory, window: object) -> None:
    with pytest.raises(ValueError, match="window must be None or an integer"):
        memory.history("c", window=window)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window must be None or an integer"):
        memory.get_messages("c", window)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("query", "limit", "field"),
    [
        ("x", -1, "limit"),
        ("x", 0, "limit"),
        ("x", 10_001, "limit"),
        ("", 5, "query"),
        ("q" * 1_000_001, 5, "query"),
    ],
)
async def test_search_arguments_are_bounded(
    memory: HybridMemory, query: str, limit: int, field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        memory.search("c", query, limit=limit)
    with pytest.raises(ValueError, match=field):
        await memory.asearch("c", query, limit=limit)


async def test_statements_are_bounded_by_the_configured_timeout(
    memory_factory: MemoryFactory,
) -> None:
    memory = memory_factory(statement_timeout_seconds=0.25)
    with memory.store.engine.connect() as conn:
        assert conn.execute(sa.text("SHOW statement_timeout")).scalar() == "250ms"
    async with (await memory.store.aengine()).connect() as conn:
        assert (await conn.execute(sa.text("SHOW statement_timeout"))).scalar() == "250ms"
    # A statement past it is an outage of the store, not a raw driver error.
    with pytest.raises(StoreUnavailableError, match="did not answer in time"):
        memory.store._run("sleep", lambda conn: conn.execute(sa.text("SELECT pg_sleep(2)")))


def test_a_missing_table_says_how_to_create_it(memory_factory: MemoryFactory, unique: str) -> None:
    from lc_hybrid_memory import MessageTable

    memory = memory_factory(table=MessageTable(name=f"never_created_{unique}"))
    with memory.store.engine.connect() as conn:
        conn.execute(sa.text(f'DROP TABLE "never_created_{unique}"'))
    with pytest.raises(StoreConfigurationError, match="create_schema"):
        memory.add_messages("c", [HumanMessage("hi")])
    with pytest.raises(StoreConfigurationError, match="does not exist"):
        memory.history("c").messages  # noqa: B018


def test_a_wrong_database_name_says_so(memory_factory: MemoryFactory, servers) -> None:
    url = sa.engine.make_url(servers.database_url).set(database="no_such_database_here")
    memory = HybridMemory.from_urls(
        redis_url=None, database_url=url.render_as_string(hide_password=False)
    )
    with pytest.raises(StoreConfigurationError, match="no_such_database_here"):
        memory.get_messages("c")
    memory.close()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {"message": record.getMessage(), "level": record.levelname}
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def test_failed_writes_never_log_or_carry_message_text(
    private_servers: PrivateServers,
    memory_factory: MemoryFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    memory = memory_factory(
        redis_url=private_servers.redis_url, database_url=private_servers.database_url
    )
    memory.add_messages("c", [HumanMessage("warm")])
    errors: list[BaseException] = []
    caplog.set_level(logging.DEBUG)
    # 1. a data error: the server quotes the bad JSON back in its message
    broken = EncodedMessage(uid="x", role="human", content="hi", payload='{"s": "' + SECRET)
    try:
        memory.store.append("c", [broken])
    except InvalidMessageError as exc:
        errors.append(exc)
    # 2. an outage mid-write: Postgres stopped
    private_servers.postgres.stop("immediate")
    try:
        memory.add_messages("c", [HumanMessage(SECRET, id="secret-1")])
    except StoreUnavailableError as exc:
        errors.append(exc)
    assert len(errors) == 2
    for exc in errors:
        logging.getLogger("app").exception("write failed", exc_info=exc)
    text_handler = logging.Formatter("%(levelname)s %(name)s %(message)s")
    rendered = [text_handler.format(r) for r in caplog.records]
    rendered += [JsonFormatter().format(r) for r in caplog.records]
    rendered += ["".join(traceback.format_exception(exc)) for exc in errors]
    assert rendered
    for line in rendered:
        assert "TOPSECRET" not in line
