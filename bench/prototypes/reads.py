"""Prototypes of the read path: a miss, a warm read, and a turn's read + write."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from langchain_core.messages import BaseMessage, messages_from_dict
from langchain_core.messages.base import message_to_dict
from sqlalchemy import Integer

from lc_hybrid_memory import codec

from .. import dataset as ds
from ..impls import Runner, new_turn_messages
from .lean import (
    APPEND_AFTER_STATE,
    CAP,
    LEASE_MS,
    PROTO_PREFIX,
    TTL_MS,
    LocalWindows,
    decode_entries,
    encode_rows,
    entries_for,
    fill_args,
    insert_after_sql,
    select_sql,
)
from .write import Setup


def miss_runners(s: Setup, sid: str) -> dict[str, tuple[str, Runner]]:
    """A miss of the 50-message conversation (its list evicted before each call)."""
    admin = s.admin
    pkey, plkey = f"{PROTO_PREFIX}{{{sid}}}", f"{PROTO_PREFIX}{{{sid}}}:fill"
    history = s.memory.history(sid)
    sel = select_sql(ds.TABLE)
    limit = CAP + 1

    def evict_lib() -> None:
        admin.memory.cache.invalidate(sid)

    def evict_proto() -> None:
        admin.redis.delete(pkey, plkey)

    def rows_raw() -> list[tuple[int, str]]:
        dbapi = s.engine.raw_connection()
        try:
            with dbapi.driver_connection.cursor() as cur:
                cur.execute(sel, (sid, sid, limit))
                rows = cur.fetchall()
        finally:
            dbapi.close()
        rows.reverse()
        return rows

    def rows_sa() -> list[tuple[int, str]]:
        c = s.table.c
        stmt = (
            select(c.id, cast(c.payload, Text))
            .where(and_(c.conversation_id >= sid, c.conversation_id <= sid))
            .order_by(c.conversation_id.desc(), c.id.desc())
            .limit(limit)
        )
        with s.engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(stmt)]
        rows.reverse()
        return rows

    from sqlalchemy import Text, and_, bindparam, cast, select

    c = s.table.c
    prebuilt = (  # built once; executed with parameters (no construction, no new cache key)
        select(c.id, cast(c.payload, Text))
        .where(and_(c.conversation_id >= bindparam("sid"), c.conversation_id <= bindparam("sid")))
        .order_by(c.conversation_id.desc(), c.id.desc())
        .limit(bindparam("n", type_=Integer))
    )

    def rows_sa_prebuilt() -> list[tuple[int, str]]:
        with s.engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(prebuilt, {"sid": sid, "n": limit})]
        rows.reverse()
        return rows

    def finish(token: str, rows: list[tuple[int, str]]) -> list[BaseMessage]:
        complete = len(rows) < limit
        if not complete:
            rows = rows[1:]
        if s.fill(keys=[pkey, plkey], args=fill_args(token, rows, complete)) != 1:
            raise AssertionError("the fill was dropped: the prototype did not do the work")
        return [codec.decode(p) for _, p in rows[-CAP:]]

    def two_rt(fetch: Callable[[], list]) -> Callable[[], list[BaseMessage]]:
        def call() -> list[BaseMessage]:
            got = s.read_or_lease(keys=[pkey, plkey], args=[secrets.token_hex(8), LEASE_MS])
            if got and got[0]:  # a hit (not the case here)
                return decode_entries(got)
            return finish(got[1].decode(), fetch())

        return call

    def three_rt_raw() -> list[BaseMessage]:
        if s.r.lrange(pkey, 0, -1):
            raise AssertionError("expected a miss")
        token = secrets.token_hex(8)
        s.r.set(plkey, token, nx=True, px=LEASE_MS)
        return finish(token, rows_raw())

    return {
        "m_lib": (
            "the library: LRANGE, lease SET NX, SELECT (SQLAlchemy), fill script",
            Runner(before=evict_lib, call=lambda: history.messages),
        ),
        "m_3rt_raw": (
            "3 Redis round trips as the library, SELECT on the raw pooled cursor",
            Runner(before=evict_proto, call=three_rt_raw),
        ),
        "m_2rt_sa": (
            "`READ_OR_LEASE` script + fill (2 round trips), SELECT through SQLAlchemy",
            Runner(before=evict_proto, call=two_rt(rows_sa)),
        ),
        "m_2rt_sa_prebuilt": (
            "same, the SELECT built once with bind parameters (SQLAlchemy)",
            Runner(before=evict_proto, call=two_rt(rows_sa_prebuilt)),
        ),
        "m_2rt_raw": (
            "`READ_OR_LEASE` + fill, SELECT on the raw pooled cursor",
            Runner(before=evict_proto, call=two_rt(rows_raw)),
        ),
    }


def rw_runners(s: Setup, sid: str) -> dict[str, tuple[str, Runner]]:
    """One read + one turn's write (the memory I/O of a turn, sync), history reused."""
    admin = s.admin
    base = admin.max_id(ds.TABLE, "conversation_id", sid)
    ins_after = insert_after_sql(ds.TABLE, 2)
    pkey, plkey = f"{PROTO_PREFIX}{{{sid}}}", f"{PROTO_PREFIX}{{{sid}}}:fill"
    fkey = ds.FLOOR_PREFIX + sid
    seed = [(r[0], r[1]) for r in admin.sql(select_sql(ds.TABLE), sid, sid, CAP)][::-1]
    seed_messages = [codec.decode(p) for _, p in seed]
    seed_state = f"#1p:{seed[-1][0]}:{len(seed) + 1}".encode()
    history = s.memory.history(sid)
    local = LocalWindows(s.r)
    append_state = s.r.register_script(APPEND_AFTER_STATE)
    floor_insert = (
        f'INSERT INTO "{ds.TABLE}" (conversation_id, role, content, payload, message_uid)'
        " VALUES (%s, %s, %s, %s, %s), (%s, %s, %s, %s, %s) RETURNING id"
    )
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
        # The state this process would hold after its previous turn's write.
        local.remember(pkey, seed_state, seed_messages)

    def undo_floor() -> None:
        admin.trim(ds.TABLE, "conversation_id", sid, base)
        admin.redis.rpop(fkey, 2)  # only this runner pushes to the floor's list

    def pooled_rows(sql: str, params: list[Any]) -> list[tuple]:
        dbapi = s.engine.raw_connection()
        try:
            with dbapi.driver_connection.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            dbapi.close()

    def lib() -> None:
        history.messages  # noqa: B018
        history.add_messages(batch.pop())

    def write_after(messages: list[BaseMessage], with_state: bool) -> Any:
        params, payloads = encode_rows(sid, messages)
        rows = pooled_rows(ins_after, [sid, sid, *params])
        got = {u: i for i, u, _ in rows}
        prev = rows[0][2] if rows else 0
        new = [(got[params[5 * k + 4]], p) for k, p in enumerate(payloads)]
        script = append_state if with_state else s.append_after
        return script(keys=[pkey, plkey], args=[CAP, TTL_MS, prev or 0, *entries_for(new)])

    def raw() -> None:
        decode_entries(s.r.lrange(pkey, 0, -1))
        if write_after(batch.pop(), False) != 2:
            raise AssertionError("the append was dropped")

    def local_tier() -> None:
        if local.read(pkey) is None or not local.unchanged:
            raise AssertionError("expected the steady state: the window unchanged since our write")
        messages = batch.pop()
        appended, state = write_after(messages, True)
        if appended != len(messages):
            raise AssertionError(f"append script returned {appended}")
        local.wrote(pkey, state, messages)

    def floor() -> None:
        messages_from_dict([orjson.loads(x) for x in s.r.lrange(fkey, -50, -1)])
        messages = batch.pop()
        payloads = [orjson.dumps(message_to_dict(m)).decode() for m in messages]
        params: list[Any] = []
        for m, p, role in zip(messages, payloads, ("user", "assistant"), strict=True):
            params += [sid, role, m.content, p, m.id or uuid.uuid4().hex]
        with s.pg.cursor() as cur:
            cur.execute(floor_insert, params)
            ids = [row[0] for row in cur.fetchall()]
        s.r.rpushx(fkey, *(f"{i}:{p}" for i, p in zip(ids, payloads, strict=True)))

    def mk(call: Callable[[], Any]) -> Runner:
        return Runner(before=before, call=call, after=undo)

    return {
        "rw_lib": ("the library: `history.messages` + `history.add_messages`", mk(lib)),
        "rw_raw": (
            "LRANGE + decode; raw pooled INSERT (+ previous id) + `APPEND_AFTER`",
            mk(raw),
        ),
        "rw_local": (
            "in-process window checked by `READ_IF_CHANGED` (copies returned); same write",
            mk(local_tier),
        ),
        "rw_floor": (
            "floor: LRANGE + messages_from_dict; INSERT … RETURNING + RPUSHX",
            Runner(before=before, call=floor, after=undo_floor),
        ),
    }


def hit_runners(s: Setup, sid: str) -> dict[str, tuple[str, Runner]]:
    """A warm read of 50: does the read-or-lease script cost anything on a hit?"""
    pkey, plkey = f"{PROTO_PREFIX}{{{sid}}}h", f"{PROTO_PREFIX}{{{sid}}}h:fill"
    seed = [(r[0], r[1]) for r in s.admin.sql(select_sql(ds.TABLE), sid, sid, CAP)][::-1]
    s.admin.redis.delete(pkey)
    s.admin.redis.rpush(pkey, "#1p", *entries_for(seed))
    history = s.memory.history(sid)

    def script() -> list[BaseMessage]:
        got = s.read_or_lease(keys=[pkey, plkey], args=[secrets.token_hex(8), LEASE_MS])
        return decode_entries(got)

    return {
        "h_lib": ("the library: LRANGE + decode", Runner(call=lambda: history.messages)),
        "h_lrange": (
            "LRANGE + codec.decode",
            Runner(call=lambda: decode_entries(s.r.lrange(pkey, 0, -1))),
        ),
        "h_script": ("`READ_OR_LEASE` (EVALSHA) + codec.decode", Runner(call=script)),
        "h_floor": (
            "floor: LRANGE + messages_from_dict",
            Runner(
                call=lambda: messages_from_dict(
                    [orjson.loads(x.partition(b":")[2]) for x in s.r.lrange(pkey, 1, -1)]
                )
            ),
        ),
    }
