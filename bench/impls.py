"""The implementations under test, each as runners of the bench scenarios.

A runner has ``before()`` and ``after()`` (untimed: evict the cache, undo a write) and ``call()``
(timed). Everything a runner times goes through the clients built from the URLs it was given,
so the same runners also run behind the counting proxies; the untimed housekeeping goes through
``Admin``'s direct connections and is never counted.
"""

from __future__ import annotations

import itertools
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
import psycopg2
import redis
import sqlalchemy as sa
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, messages_from_dict
from langchain_core.messages.base import message_to_dict
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory

from lc_hybrid_memory import HybridMemory, MessageTable, sync_url

from . import dataset as ds

SCENARIOS = {
    "warm": "warm read (history object reused)",
    "new_object": "read through a new history object per call",
    "cold": "cold read (cache evicted → Postgres → fill)",
    "write": "one turn's write: add_messages([human, ai])",
    "turn": "full turn: RunnableWithMessageHistory + fake model",
    "rw": "a turn's memory I/O, sync: one read + add_messages([human, ai]) (history reused)",
    "construct": "history object construction only",
}

LABELS = {
    "ours": "lc-hybrid-memory (window=50)",
    "ours_full": "lc-hybrid-memory (window=None)",
    "ours_empty": "lc-hybrid-memory, table without the background rows",
    "lc_redis": "langchain-community RedisChatMessageHistory",
    "lc_sql": "langchain-community SQLChatMessageHistory (Postgres)",
    "lc_pg": "langchain-postgres PostgresChatMessageHistory",
    "floor_rtt": "floor: LRANGE -50 -1 alone (no decode)",
    "floor_lrange": "floor: LRANGE -50 -1 + messages_from_dict",
    "floor_select": "floor: indexed SELECT … LIMIT 50 + messages_from_dict",
    "floor_miss": "floor: indexed SELECT + one RPUSH fill + messages_from_dict",
    "floor_write": "floor: INSERT … RETURNING + RPUSHX",
    "floor_rw": "floor: LRANGE + messages_from_dict, then INSERT … RETURNING + RPUSHX",
    "null": "no memory I/O (fixed in-process history)",
}

REPLY = "Your order 4721 arrives Tuesday between 9:00 and 12:00."


def new_turn_messages() -> list[BaseMessage]:
    return [
        HumanMessage("When does order 4721 arrive? " + uuid.uuid4().hex[:8]),
        AIMessage(
            REPLY,
            id=f"lc_run--{uuid.uuid4()}",
            response_metadata={"model_name": "bench-fake", "finish_reason": "stop"},
            usage_metadata={"input_tokens": 812, "output_tokens": 41, "total_tokens": 853},
        ),
    ]


class FakeChatModel(BaseChatModel):
    """A chat model that answers at once with a fixed reply (and usage metadata)."""

    think_seconds: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "bench-fake"

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any):
        if self.think_seconds:
            time.sleep(self.think_seconds)
        reply = AIMessage(
            REPLY,
            response_metadata={"model_name": "bench-fake", "finish_reason": "stop"},
            usage_metadata={"input_tokens": 812, "output_tokens": 41, "total_tokens": 853},
        )
        return ChatResult(generations=[ChatGeneration(message=reply)])


class TimedHistory(BaseChatMessageHistory):
    """Delegates to a history and adds the time spent in it to ``clock[0]``."""

    def __init__(self, inner: BaseChatMessageHistory, clock: list[float]) -> None:
        self.inner = inner
        self.clock = clock

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        t0 = time.perf_counter()
        try:
            return self.inner.messages
        finally:
            self.clock[0] += time.perf_counter() - t0

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        t0 = time.perf_counter()
        try:
            self.inner.add_messages(messages)
        finally:
            self.clock[0] += time.perf_counter() - t0

    def clear(self) -> None:
        self.inner.clear()


class FixedHistory(BaseChatMessageHistory):
    """No I/O at all: a fixed list, writes discarded (the turn's floor)."""

    def __init__(self, messages: list[BaseMessage]) -> None:
        self._messages = messages

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        return list(self._messages)

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        pass

    def clear(self) -> None:
        pass


def make_chain(factory: Callable[[str], BaseChatMessageHistory]) -> RunnableWithMessageHistory:
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "You are a helpful delivery assistant."),
            MessagesPlaceholder("history"),
            ("human", "{input}"),
        ]
    )
    return RunnableWithMessageHistory(
        prompt | FakeChatModel(),
        factory,
        input_messages_key="input",
        history_messages_key="history",
    )


class Admin:
    """Direct (never proxied) connections for the untimed housekeeping."""

    def __init__(self, redis_url: str, database_url: str) -> None:
        self.redis = redis.Redis.from_url(redis_url)
        self.pg = psycopg2.connect(database_url)
        self.pg.autocommit = True
        self.memory = HybridMemory.from_urls(
            redis_url=redis_url,
            database_url=database_url,
            table=MessageTable(name=ds.TABLE),
            prefix=ds.PREFIX,
        )
        self.small = HybridMemory.from_urls(
            redis_url=redis_url,
            database_url=database_url,
            table=MessageTable(name=ds.SMALL_TABLE),
            prefix=ds.SMALL_PREFIX,
        )

    def sql(self, statement: str, *params: Any) -> list[tuple]:
        with self.pg.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def max_id(self, table: str, column: str, key: Any) -> int:
        rows = self.sql(f'SELECT max(id) FROM "{table}" WHERE {column} = %s', key)
        return rows[0][0] or 0

    def trim(self, table: str, column: str, key: Any, base: int) -> None:
        self.sql(f'DELETE FROM "{table}" WHERE {column} = %s AND id > %s', key, base)

    def close(self) -> None:
        self.redis.close()
        self.pg.close()
        self.memory.close()
        self.small.close()


@dataclass
class Runner:
    call: Callable[[], Any]
    before: Callable[[], Any] = lambda: None
    after: Callable[[], Any] = lambda: None
    clock: list[float] = field(default_factory=lambda: [0.0])  # memory time of the last call
    heavy: bool = False  # reads the whole conversation (few calls at long lengths)


class Impl:
    """Base: subclasses provide ``runner(scenario, length)`` or ``None`` if not applicable."""

    name = ""

    def runner(self, scenario: str, length: int) -> Runner | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _turn_runner(
    factory: Callable[[str], BaseChatMessageHistory], sid: str, after: Callable[[], Any]
) -> Runner:
    clock = [0.0]

    def timed_factory(session_id: str) -> BaseChatMessageHistory:
        t0 = time.perf_counter()
        history = factory(session_id)
        clock[0] += time.perf_counter() - t0
        return TimedHistory(history, clock)

    chain = make_chain(timed_factory)
    config = {"configurable": {"session_id": sid}}
    counter = itertools.count()

    def call() -> Any:
        clock[0] = 0.0
        return chain.invoke({"input": f"When does order 4721 arrive? {next(counter)}"}, config)

    return Runner(call=call, after=after, clock=clock)


def _history_runner(
    factory: Callable[[str], BaseChatMessageHistory],
    scenario: str,
    sid: str,
    heavy: bool,
    make_undo: Callable[[], Callable[[], Any]],
) -> Runner | None:
    """The runner of a scenario for a plain ``BaseChatMessageHistory`` implementation.

    ``make_undo`` returns what removes a write's messages again; it is called only for the
    write and turn scenarios (it may read the current state, e.g. the last row id).
    """
    if scenario == "construct":
        return Runner(call=lambda: factory(sid))
    if scenario == "warm":
        history = factory(sid)
        return Runner(call=lambda: history.messages, heavy=heavy)
    if scenario == "new_object":
        return Runner(call=lambda: factory(sid).messages, heavy=heavy)
    if scenario == "write":
        history = factory(sid)
        batch: list[list[BaseMessage]] = []
        return Runner(
            before=lambda: batch.append(new_turn_messages()),
            call=lambda: history.add_messages(batch.pop()),
            after=make_undo(),
        )
    if scenario == "turn":
        runner = _turn_runner(factory, sid, make_undo())
        runner.heavy = heavy
        return runner
    if scenario == "rw":
        return _rw_runner(factory(sid), make_undo(), heavy)
    return None


def _rw_runner(history: BaseChatMessageHistory, undo: Callable[[], Any], heavy: bool) -> Runner:
    """One read then one turn's write on a reused history object (the memory I/O of a turn)."""
    batch: list[list[BaseMessage]] = []

    def call() -> None:
        history.messages  # noqa: B018 - the read
        history.add_messages(batch.pop())

    return Runner(
        before=lambda: batch.append(new_turn_messages()), call=call, after=undo, heavy=heavy
    )


class Ours(Impl):
    def __init__(
        self, admin: Admin, redis_url: str, database_url: str, *, window: int | None, name: str
    ) -> None:
        self.name = name
        self.admin = admin
        self.window = window
        self.memory = HybridMemory.from_urls(
            redis_url=redis_url,
            database_url=database_url,
            table=MessageTable(name=ds.TABLE),
            prefix=ds.PREFIX,
        )

    def runner(self, scenario: str, length: int) -> Runner | None:
        sid = ds.sid_for(length)
        memory, admin, window = self.memory, self.admin, self.window
        heavy = window is None and length > 50
        if scenario == "construct":
            return Runner(call=lambda: memory.history(sid, window=window))
        if scenario == "warm":
            history = memory.history(sid, window=window)
            return Runner(call=lambda: history.messages, heavy=heavy)
        if scenario == "new_object":
            return Runner(call=lambda: memory.history(sid, window=window).messages, heavy=heavy)
        if scenario == "cold":
            history = memory.history(sid, window=window)
            return Runner(
                before=lambda: admin.memory.cache.invalidate(sid),
                call=lambda: history.messages,
                heavy=heavy,
            )
        if self.window is None:
            return None  # writes do not depend on the window
        base = admin.max_id(ds.TABLE, "conversation_id", sid)

        def undo() -> None:
            admin.trim(ds.TABLE, "conversation_id", sid, base)
            admin.memory.cache.invalidate(sid)
            admin.memory.get_messages(sid)  # warm again, as before the write

        if scenario == "write":
            history = memory.history(sid, window=window)
            batch: list[list[BaseMessage]] = []
            return Runner(
                before=lambda: batch.append(new_turn_messages()),
                call=lambda: history.add_messages(batch.pop()),
                after=undo,
            )
        if scenario == "turn":
            return _turn_runner(lambda s: memory.history(s, window=window), sid, undo)
        if scenario == "rw":
            return _rw_runner(memory.history(sid, window=window), undo, heavy=False)
        return None

    def close(self) -> None:
        self.memory.close()


class OursEmptyTable(Impl):
    """Cold reads on a table holding only the measured conversation (the 1 M-row check)."""

    name = "ours_empty"

    def __init__(self, admin: Admin, redis_url: str, database_url: str) -> None:
        self.admin = admin
        self.memory = HybridMemory.from_urls(
            redis_url=redis_url,
            database_url=database_url,
            table=MessageTable(name=ds.SMALL_TABLE),
            prefix=ds.SMALL_PREFIX,
        )

    def runner(self, scenario: str, length: int) -> Runner | None:
        if scenario != "cold" or length != 50:
            return None
        sid = ds.sid_for(length)
        history = self.memory.history(sid)
        return Runner(
            before=lambda: self.admin.small.cache.invalidate(sid), call=lambda: history.messages
        )

    def close(self) -> None:
        self.memory.close()


class LcRedis(Impl):
    name = "lc_redis"

    def __init__(self, admin: Admin, redis_url: str, database_url: str) -> None:
        from langchain_community.chat_message_histories import RedisChatMessageHistory

        self.cls = RedisChatMessageHistory
        self.admin = admin
        self.url = redis_url

    def factory(self, sid: str) -> BaseChatMessageHistory:
        return self.cls(sid, url=self.url, key_prefix=ds.LC_REDIS_PREFIX)

    def runner(self, scenario: str, length: int) -> Runner | None:
        sid = ds.sid_for(length)
        key = ds.LC_REDIS_PREFIX + sid

        def undo() -> None:
            self.admin.redis.lpop(key, 2)

        return _history_runner(self.factory, scenario, sid, length > 50, lambda: undo)


class LcSql(Impl):
    name = "lc_sql"

    def __init__(self, admin: Admin, redis_url: str, database_url: str) -> None:
        from langchain_community.chat_message_histories import SQLChatMessageHistory

        self.cls = SQLChatMessageHistory
        self.admin = admin
        # One shared engine, as the docs advise for a server (psycopg2, the default driver).
        self.engine = sa.create_engine(sync_url(database_url))

    def factory(self, sid: str) -> BaseChatMessageHistory:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.cls(sid, connection=self.engine, table_name=ds.LC_SQL_TABLE)

    def runner(self, scenario: str, length: int) -> Runner | None:
        sid = ds.sid_for(length)

        def make_undo() -> Callable[[], Any]:
            base = self.admin.max_id(ds.LC_SQL_TABLE, "session_id", sid)
            return lambda: self.admin.trim(ds.LC_SQL_TABLE, "session_id", sid, base)

        return _history_runner(self.factory, scenario, sid, length > 50, make_undo)

    def close(self) -> None:
        self.engine.dispose()


class LcPostgres(Impl):
    name = "lc_pg"

    def __init__(self, admin: Admin, redis_url: str, database_url: str) -> None:
        from langchain_postgres import PostgresChatMessageHistory

        self.cls = PostgresChatMessageHistory
        self.admin = admin
        # Its documented use: one psycopg 3 connection, handed to every history object.
        self.conn = psycopg.connect(database_url)

    def factory(self, sid: str) -> BaseChatMessageHistory:
        return self.cls(ds.LC_PG_TABLE, ds.uuid_for(sid), sync_connection=self.conn)

    def runner(self, scenario: str, length: int) -> Runner | None:
        sid = ds.sid_for(length)
        key = ds.uuid_for(sid)

        def make_undo() -> Callable[[], Any]:
            base = self.admin.max_id(ds.LC_PG_TABLE, "session_id", key)

            def undo() -> None:
                self.conn.rollback()  # end the transaction its reads leave open
                self.admin.trim(ds.LC_PG_TABLE, "session_id", key, base)

            return undo

        return _history_runner(self.factory, scenario, sid, length > 50, make_undo)

    def close(self) -> None:
        self.conn.close()


class Floors(Impl):
    """The bare operations a memory layer cannot beat (same servers, same data)."""

    name = "floors"

    def __init__(self, admin: Admin, redis_url: str, database_url: str) -> None:
        self.admin = admin
        self.redis = redis.Redis.from_url(redis_url)
        self.pg = psycopg2.connect(database_url)
        self.pg.autocommit = True
        self.select = (
            f'SELECT id, payload::text FROM "{ds.TABLE}" WHERE conversation_id = %s '
            "ORDER BY conversation_id DESC, id DESC LIMIT %s"
        )

    def runners(self, scenario: str, length: int) -> dict[str, Runner]:
        sid = ds.sid_for(length)
        key = ds.FLOOR_PREFIX + sid
        r, pg, admin = self.redis, self.pg, self.admin
        if scenario == "warm":

            def lrange() -> list[BaseMessage]:
                return messages_from_dict([orjson.loads(x) for x in r.lrange(key, -50, -1)])

            def select() -> list[BaseMessage]:
                with pg.cursor() as cur:
                    cur.execute(self.select, (sid, 50))
                    rows = cur.fetchall()
                rows.reverse()
                return messages_from_dict([orjson.loads(p) for _, p in rows])

            return {
                "floor_rtt": Runner(call=lambda: r.lrange(key, -50, -1)),
                "floor_lrange": Runner(call=lrange),
                "floor_select": Runner(call=select),
            }
        if scenario == "cold":
            fill_key = "bench:floorfill:" + sid

            def miss() -> list[BaseMessage]:
                with pg.cursor() as cur:
                    cur.execute(self.select, (sid, 51))
                    rows = cur.fetchall()
                rows.reverse()
                rows = rows[-50:]
                # One command: the list was deleted before the call (untimed).
                r.rpush(fill_key, "#1p", *(f"{i}:{p}" for i, p in rows))
                return messages_from_dict([orjson.loads(p) for _, p in rows])

            return {"floor_miss": Runner(before=lambda: admin.redis.delete(fill_key), call=miss)}
        if scenario in ("write", "rw"):
            base = admin.max_id(ds.TABLE, "conversation_id", sid)
            batch: list[list[BaseMessage]] = []
            insert = (
                f'INSERT INTO "{ds.TABLE}" (conversation_id, role, content, payload, message_uid)'
                " VALUES (%s, %s, %s, %s, %s), (%s, %s, %s, %s, %s) RETURNING id"
            )

            def write() -> None:
                messages = batch.pop()
                payloads = [orjson.dumps(message_to_dict(m)).decode() for m in messages]
                params: list[Any] = []
                for m, p, role in zip(messages, payloads, ("user", "assistant"), strict=True):
                    params += [sid, role, m.content, p, m.id or uuid.uuid4().hex]
                with pg.cursor() as cur:
                    cur.execute(insert, params)
                    ids = [row[0] for row in cur.fetchall()]
                r.rpushx(key, *(f"{i}:{p}" for i, p in zip(ids, payloads, strict=True)))

            def undo() -> None:
                admin.trim(ds.TABLE, "conversation_id", sid, base)
                admin.redis.rpop(key, 2)

            def read_write() -> None:
                messages_from_dict([orjson.loads(x) for x in r.lrange(key, -50, -1)])
                write()

            before = lambda: batch.append(new_turn_messages())  # noqa: E731
            if scenario == "rw":
                return {"floor_rw": Runner(before=before, call=read_write, after=undo)}
            return {"floor_write": Runner(before=before, call=write, after=undo)}
        if scenario == "turn":
            fixed = admin.memory.get_messages(sid)
            chain = make_chain(lambda _sid: FixedHistory(fixed))
            config = {"configurable": {"session_id": sid}}
            return {"null": Runner(call=lambda: chain.invoke({"input": "When?"}, config))}
        return {}

    def close(self) -> None:
        self.redis.close()
        self.pg.close()


def build(admin: Admin, redis_url: str, database_url: str) -> tuple[list[Impl], Floors]:
    impls: list[Impl] = [
        Ours(admin, redis_url, database_url, window=50, name="ours"),
        Ours(admin, redis_url, database_url, window=None, name="ours_full"),
        OursEmptyTable(admin, redis_url, database_url),
        LcRedis(admin, redis_url, database_url),
        LcSql(admin, redis_url, database_url),
        LcPostgres(admin, redis_url, database_url),
    ]
    return impls, Floors(admin, redis_url, database_url)


def runners_for(impls: list[Impl], floors: Floors, scenario: str, length: int) -> dict[str, Runner]:
    out: dict[str, Runner] = {}
    for impl in impls:
        runner = impl.runner(scenario, length)
        if runner is not None:
            out[impl.name] = runner
    out.update(floors.runners(scenario, length))
    return out
