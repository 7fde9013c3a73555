"""Prototypes of a turn's write (Postgres + Redis), side by side with the library's."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg2
import redis
from langchain_core.messages import BaseMessage

from lc_hybrid_memory import HybridMemory, MessageTable, codec

from .. import dataset as ds
from ..impls import Runner, new_turn_messages
from .lean import (
    APPEND_AFTER,
    APPEND_LIBRARY,
    CAP,
    FILL,
    PROTO_PREFIX,
    READ_OR_LEASE,
    TTL_MS,
    encode_rows,
    entries_for,
    insert_after_sql,
    insert_sql,
    select_sql,
)


class Setup:
    """Clients shared by the sync prototypes (built from the same URLs as the bench's)."""

    def __init__(self, redis_url: str, database_url: str, admin: Any) -> None:
        self.admin = admin
        self.memory = HybridMemory.from_urls(
            redis_url=redis_url,
            database_url=database_url,
            table=MessageTable(name=ds.TABLE),
            prefix=ds.PREFIX,
        )
        from sqlalchemy import create_engine
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        from lc_hybrid_memory import sync_url

        self.engine = create_engine(
            sync_url(database_url),
            isolation_level="AUTOCOMMIT",
            connect_args={"options": "-c enable_bitmapscan=off"},
        )
        self.table = MessageTable(name=ds.TABLE).build()
        c = self.table.c
        self.sa_insert = (
            pg_insert(self.table)
            .on_conflict_do_nothing(index_elements=[c.conversation_id, c.message_uid])
            .returning(c.id, c.message_uid)
        )
        self.held_sa = self.engine.connect()
        self.pg = psycopg2.connect(database_url, options="-c enable_bitmapscan=off")
        self.pg.autocommit = True
        import psycopg

        # psycopg 3 (SQLAlchemy's ``postgresql+psycopg``): server-side prepared statements on
        # request (``prepare=True``), parameters bound by the server (a str binds to jsonb).
        self.pg3 = psycopg.connect(
            database_url, autocommit=True, options="-c enable_bitmapscan=off"
        )
        self.r = redis.Redis.from_url(redis_url)
        self.append_library = self.r.register_script(APPEND_LIBRARY)
        self.append_after = self.r.register_script(APPEND_AFTER)
        self.read_or_lease = self.r.register_script(READ_OR_LEASE)
        self.fill = self.r.register_script(FILL)

    def close(self) -> None:
        self.held_sa.close()
        self.engine.dispose()
        self.pg.close()
        self.pg3.close()
        self.r.close()
        self.memory.close()


def _appended(result: int) -> None:
    """Every prototype must do the library's work: its append must have succeeded."""
    if result != 2:
        raise AssertionError(f"append script returned {result}, expected 2 entries appended")


def write_runners(s: Setup, sid: str) -> dict[str, tuple[str, Runner]]:
    """A turn's write (2 messages) on the warm conversation; undone after each call."""
    admin = s.admin
    base = admin.max_id(ds.TABLE, "conversation_id", sid)
    ins2, ins2_after = insert_sql(ds.TABLE, 2), insert_after_sql(ds.TABLE, 2)
    pkey, plkey = f"{PROTO_PREFIX}{{{sid}}}", f"{PROTO_PREFIX}{{{sid}}}:fill"
    lib_history = s.memory.history(sid)
    seed = [(r[0], r[1]) for r in admin.sql(select_sql(ds.TABLE), sid, sid, CAP)][::-1]
    batch: list[list[BaseMessage]] = []

    def before() -> None:
        batch.append(new_turn_messages())

    def undo() -> None:
        admin.trim(ds.TABLE, "conversation_id", sid, base)
        admin.memory.cache.invalidate(sid)
        admin.memory.get_messages(sid)
        pipe = admin.redis.pipeline(transaction=False)
        pipe.delete(pkey)
        pipe.rpush(pkey, "#1p", *entries_for(seed))
        pipe.execute()

    def lib() -> None:
        lib_history.add_messages(batch.pop())

    def append_after(prev: int | None, new: list[tuple[int, str]]) -> None:
        keys, args = [pkey, plkey], [CAP, TTL_MS, prev or 0, *entries_for(new)]
        _appended(s.append_after(keys=keys, args=args))

    def sa_rows(messages: list[BaseMessage]) -> tuple[list[dict], list[str]]:
        rows, payloads = [], []
        for m in messages:
            p = codec.encode(m)
            payloads.append(p)
            rows.append(
                {
                    "conversation_id": sid,
                    "role": codec.role_of(m),
                    "content": codec.plain_text(m),
                    "payload": p,
                    "message_uid": m.id or f"lchm-{uuid.uuid4().hex}",
                }
            )
        return rows, payloads

    def sa_pooled() -> None:  # the library's SQL half: engine.connect() per call
        rows, payloads = sa_rows(batch.pop())
        with s.engine.connect() as conn:
            got = {u: i for i, u in conn.execute(s.sa_insert, rows)}
        new = [(got[r["message_uid"]], p) for r, p in zip(rows, payloads, strict=True)]
        _appended(s.append_library(keys=[pkey, plkey], args=[CAP, TTL_MS, *entries_for(new)]))

    def sa_held() -> None:
        rows, payloads = sa_rows(batch.pop())
        got = {u: i for i, u in s.held_sa.execute(s.sa_insert, rows)}
        new = [(got[r["message_uid"]], p) for r, p in zip(rows, payloads, strict=True)]
        _appended(s.append_library(keys=[pkey, plkey], args=[CAP, TTL_MS, *entries_for(new)]))

    def raw_cursor(conn: Any, sql: str, params: list[Any]) -> list[tuple]:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def raw_pooled() -> None:  # pooled psycopg2 cursor, pre-rendered INSERT, library script
        messages = batch.pop()
        params, payloads = encode_rows(sid, messages)
        dbapi = s.engine.raw_connection()
        try:
            got = {u: i for i, u in raw_cursor(dbapi.driver_connection, ins2, params)}
        finally:
            dbapi.close()
        new = [(got[params[5 * k + 4]], p) for k, p in enumerate(payloads)]
        _appended(s.append_library(keys=[pkey, plkey], args=[CAP, TTL_MS, *entries_for(new)]))

    def raw_pooled_after() -> None:  # + the prev-id INSERT and APPEND_AFTER
        messages = batch.pop()
        params, payloads = encode_rows(sid, messages)
        dbapi = s.engine.raw_connection()
        try:
            rows = raw_cursor(dbapi.driver_connection, ins2_after, [sid, sid, *params])
        finally:
            dbapi.close()
        got = {u: i for i, u, _ in rows}
        prev = rows[0][2] if rows else 0
        new = [(got[params[5 * k + 4]], p) for k, p in enumerate(payloads)]
        _appended(
            s.append_after(keys=[pkey, plkey], args=[CAP, TTL_MS, prev or 0, *entries_for(new)])
        )

    def raw_held_after() -> None:  # held psycopg2 connection: no pool checkout at all
        messages = batch.pop()
        params, payloads = encode_rows(sid, messages)
        rows = raw_cursor(s.pg, ins2_after, [sid, sid, *params])
        got = {u: i for i, u, _ in rows}
        prev = rows[0][2] if rows else 0
        new = [(got[params[5 * k + 4]], p) for k, p in enumerate(payloads)]
        _appended(
            s.append_after(keys=[pkey, plkey], args=[CAP, TTL_MS, prev or 0, *entries_for(new)])
        )

    # Server-side prepared statements (psycopg2 has no protocol-level prepare: PREPARE once
    # per connection, then EXECUTE): no parse/plan per call on the server.
    with s.pg.cursor() as cur:
        cur.execute("DEALLOCATE ALL")
        cur.execute(f"PREPARE proto_ins AS {insert_sql(ds.TABLE, 2, placeholder='$')}")
        cur.execute(
            "PREPARE proto_ins_after AS "
            + insert_after_sql(ds.TABLE, 2)
            .replace("%s AND conversation_id <= %s", "$11 AND conversation_id <= $11")
            .replace(
                "VALUES (%s, %s, %s, %s, %s), (%s, %s, %s, %s, %s)",
                "VALUES ($1, $2, $3, $4::jsonb, $5), ($6, $7, $8, $9::jsonb, $10)",
            )
        )

    def sql_prepared() -> None:
        params, _ = encode_rows(sid, batch.pop())
        raw_cursor(s.pg, "EXECUTE proto_ins (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", params)

    def sql_held() -> None:
        params, _ = encode_rows(sid, batch.pop())
        raw_cursor(s.pg, ins2, params)

    def sql_prepared_after() -> None:
        params, _ = encode_rows(sid, batch.pop())
        raw_cursor(
            s.pg,
            "EXECUTE proto_ins_after (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [*params, sid],
        )

    def held_prepared_after() -> None:  # the leanest full write
        messages = batch.pop()
        params, payloads = encode_rows(sid, messages)
        rows = raw_cursor(
            s.pg,
            "EXECUTE proto_ins_after (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [*params, sid],
        )
        got = {u: i for i, u, _ in rows}
        prev = rows[0][2] if rows else 0
        new = [(got[params[5 * k + 4]], p) for k, p in enumerate(payloads)]
        _appended(
            s.append_after(keys=[pkey, plkey], args=[CAP, TTL_MS, prev or 0, *entries_for(new)])
        )

    ins2_after_pg3 = insert_after_sql(ds.TABLE, 2)

    def sql_pg3_prepared_after() -> None:
        params, _ = encode_rows(sid, batch.pop())
        s.pg3.execute(ins2_after_pg3, [sid, sid, *params], prepare=True).fetchall()

    def pg3_prepared_after() -> None:
        messages = batch.pop()
        params, payloads = encode_rows(sid, messages)
        rows = s.pg3.execute(ins2_after_pg3, [sid, sid, *params], prepare=True).fetchall()
        got = {u: i for i, u, _ in rows}
        prev = rows[0][2] if rows else 0
        new = [(got[params[5 * k + 4]], p) for k, p in enumerate(payloads)]
        append_after(prev, new)

    # The halves alone, to split the cost.
    def sql_sa_pooled() -> None:
        rows, _ = sa_rows(batch.pop())
        with s.engine.connect() as conn:
            conn.execute(s.sa_insert, rows).all()

    def sql_raw_pooled() -> None:
        params, _ = encode_rows(sid, batch.pop())
        dbapi = s.engine.raw_connection()
        try:
            raw_cursor(dbapi.driver_connection, ins2, params)
        finally:
            dbapi.close()

    def sql_raw_pooled_after() -> None:
        params, _ = encode_rows(sid, batch.pop())
        dbapi = s.engine.raw_connection()
        try:
            raw_cursor(dbapi.driver_connection, ins2_after, [sid, sid, *params])
        finally:
            dbapi.close()

    last = seed[-1][0]
    fake = [(last + 1, codec.encode(m)) for m in new_turn_messages()]
    fake[1] = (last + 2, fake[1][1])

    def redis_library_script() -> None:
        batch.pop()
        _appended(s.append_library(keys=[pkey, plkey], args=[CAP, TTL_MS, *entries_for(fake)]))

    def redis_after_script() -> None:
        batch.pop()
        _appended(s.append_after(keys=[pkey, plkey], args=[CAP, TTL_MS, last, *entries_for(fake)]))

    def redis_rpushx() -> None:
        batch.pop()
        s.r.rpushx(pkey, *entries_for(fake))

    def encode_only() -> None:
        encode_rows(sid, batch.pop())

    def mk(call: Callable[[], Any]) -> Runner:
        return Runner(before=before, call=call, after=undo)

    return {
        "w_lib": ("the library: `history.add_messages([human, ai])`", mk(lib)),
        "w_sa_pooled": (
            "SQLAlchemy Core INSERT via `engine.connect()` per call + the library's script",
            mk(sa_pooled),
        ),
        "w_sa_held": ("same, on a held SQLAlchemy Connection (no pool checkout)", mk(sa_held)),
        "w_raw_pooled": (
            "`engine.raw_connection()` + psycopg2 cursor, pre-rendered INSERT + library script",
            mk(raw_pooled),
        ),
        "w_raw_pooled_after": (
            "same, INSERT also returning the previous row id + `APPEND_AFTER` script",
            mk(raw_pooled_after),
        ),
        "w_raw_held_after": (
            "same on a held psycopg2 connection (no pool)",
            mk(raw_held_after),
        ),
        "w_held_prepared_after": (
            "held psycopg2 connection, prepared INSERT + previous row id + `APPEND_AFTER`",
            mk(held_prepared_after),
        ),
        "w_pg3_prepared_after": (
            "held psycopg 3 connection, `prepare=True` INSERT + previous row id + `APPEND_AFTER`",
            mk(pg3_prepared_after),
        ),
        "s_sa_pooled": ("SQL half only: SQLAlchemy Core via the pool", mk(sql_sa_pooled)),
        "s_pg3_prepared_after": (
            "SQL half only: held psycopg 3 connection, prepared INSERT + previous row id",
            mk(sql_pg3_prepared_after),
        ),
        "s_held": ("SQL half only: held psycopg2 connection, pre-rendered INSERT", mk(sql_held)),
        "s_prepared": ("SQL half only: held connection, prepared INSERT", mk(sql_prepared)),
        "s_prepared_after": (
            "SQL half only: held connection, prepared INSERT + previous row id",
            mk(sql_prepared_after),
        ),
        "s_raw_pooled": ("SQL half only: raw cursor of a pooled connection", mk(sql_raw_pooled)),
        "s_raw_pooled_after": (
            "SQL half only: raw cursor, INSERT + previous row id (CTE)",
            mk(sql_raw_pooled_after),
        ),
        "r_library": ("Redis half only: the library's append script", mk(redis_library_script)),
        "r_after": ("Redis half only: `APPEND_AFTER` script", mk(redis_after_script)),
        "r_rpushx": ("Redis half only: bare RPUSHX (the floor's)", mk(redis_rpushx)),
        "e_encode": ("encoding only: codec.encode + role + text of 2 messages", mk(encode_only)),
    }
