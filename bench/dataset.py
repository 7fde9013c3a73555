"""Bulk-loaded conversations, in each implementation's own storage format.

Every SQL table gets the same rows: the measured conversations (``bench-<length>``) and
``background`` rows of other conversations (50 messages each), interleaved by position so that
a conversation's rows are spread over the whole heap as they would be after months of traffic.
One ``INSERT … SELECT generate_series`` per table, then ``VACUUM ANALYZE``.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import psycopg2
import redis
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.messages.base import message_to_dict

from lc_hybrid_memory import codec

TABLE = "bench_messages"  # ours (the library's schema)
SMALL_TABLE = "bench_messages_small"  # ours, without the background rows
LC_SQL_TABLE = "bench_lc_sql"  # langchain-community SQLChatMessageHistory's schema
LC_PG_TABLE = "bench_lc_pg"  # langchain-postgres PostgresChatMessageHistory's schema
PREFIX = "bench:mem:"
SMALL_PREFIX = "bench:small:"
LC_REDIS_PREFIX = "bench:lcr:"
FLOOR_PREFIX = "bench:floor:"
BACKGROUND_CONVERSATION_LENGTH = 50


def sid_for(length: int) -> str:
    return f"bench-{length}"


def uuid_for(sid: str) -> str:
    """langchain-postgres needs UUID session ids: md5(sid), the same in SQL and Python."""
    return str(uuid.UUID(hashlib.md5(sid.encode()).hexdigest()))


HUMAN = HumanMessage(
    "Hi! This is message @N@ of @S@. Could you check the delivery status of order 4721 "
    "and tell me when it arrives? Thanks"
)
AI = AIMessage(
    "Sure — order 4721 shipped yesterday and should arrive on Tuesday between 9:00 and "
    "12:00. You'll get a text with the tracking link when it's out for delivery. "
    "(reply @N@ in @S@)",
    id="lc_run--@S@-@N@",
    response_metadata={"model_name": "bench-fake", "finish_reason": "stop"},
    usage_metadata={"input_tokens": 812, "output_tokens": 41, "total_tokens": 853},
)


def message(n: int, sid: str) -> BaseMessage:
    """The n-th message (1-based) of a conversation, as the bulk load stores it."""
    template = HUMAN if n % 2 == 1 else AI
    data = template.model_dump()
    data["content"] = data["content"].replace("@N@", str(n)).replace("@S@", sid)
    if data.get("id"):
        data["id"] = data["id"].replace("@N@", str(n)).replace("@S@", sid)
    return type(template)(**data)


def _lc_json(m: BaseMessage) -> str:
    return json.dumps(message_to_dict(m))  # langchain-community / -postgres encoding


def _orjson(m: BaseMessage) -> str:
    return orjson.dumps(message_to_dict(m)).decode()


@dataclass
class LoadReport:
    rows_per_table: int
    background_rows: int
    seconds: float


_ROWS = """
    SELECT 'bg-' || c AS sid, n, {bg_len} AS len
      FROM generate_series(0, %(bg_convs)s - 1) c CROSS JOIN generate_series(1, {bg_len}) n
    UNION ALL
    SELECT s, n, l FROM unnest(%(sids)s::text[], %(lens)s::int[]) AS t(s, l)
      CROSS JOIN LATERAL generate_series(1, l) n
"""


def _text(expr_h: str, expr_a: str) -> str:
    return (
        f"replace(replace(CASE WHEN mod(n, 2) = 1 THEN {expr_h} ELSE {expr_a} END, "
        "'@N@', n::text), '@S@', sid)"
    )


def load(
    database_url: str,
    redis_url: str,
    lengths: list[int],
    background_rows: int,
    create_ours: Callable[[str], None],
    create_lc_sql: Callable[[], None],
    create_lc_pg: Callable[[], None],
    log: Callable[[str], None] = print,
) -> LoadReport:
    """Drop and reload every table and key of the bench."""
    started = time.monotonic()
    bg_convs = max(1, background_rows // BACKGROUND_CONVERSATION_LENGTH)
    sids = [sid_for(n) for n in lengths]
    params = {
        "bg_convs": bg_convs if background_rows else 0,
        "sids": sids,
        "lens": lengths,
        "hc": HUMAN.content,
        "ac": AI.content,
        "hp": codec.encode(HUMAN),
        "ap": codec.encode(AI),
        "hj": _lc_json(HUMAN),
        "aj": _lc_json(AI),
    }
    rows = _ROWS.format(bg_len=BACKGROUND_CONVERSATION_LENGTH)
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    cur = conn.cursor()
    for table in (TABLE, SMALL_TABLE, LC_SQL_TABLE, LC_PG_TABLE):
        cur.execute(f'DROP TABLE IF EXISTS "{table}"')
    create_ours(TABLE)
    create_ours(SMALL_TABLE)
    create_lc_sql()
    create_lc_pg()
    # The SQL history's own schema has no index on session_id: every read would scan the
    # whole table. We give it the index langchain-postgres creates, so the comparison is fair.
    cur.execute(f'CREATE INDEX IF NOT EXISTS "{LC_SQL_TABLE}_sid" ON "{LC_SQL_TABLE}" (session_id)')
    order = "ORDER BY n::float8 / len, sid"
    statements = {
        TABLE: f"""
            INSERT INTO "{TABLE}" (conversation_id, role, content, payload, message_uid)
            SELECT sid, CASE WHEN mod(n, 2) = 1 THEN 'user' ELSE 'assistant' END,
                   {_text("%(hc)s", "%(ac)s")}, ({_text("%(hp)s", "%(ap)s")})::jsonb,
                   'bulk-' || sid || '-' || n
              FROM ({rows}) r {order}""",
        LC_SQL_TABLE: f"""
            INSERT INTO "{LC_SQL_TABLE}" (session_id, message)
            SELECT sid, {_text("%(hj)s", "%(aj)s")} FROM ({rows}) r {order}""",
        LC_PG_TABLE: f"""
            INSERT INTO "{LC_PG_TABLE}" (session_id, message)
            SELECT md5(sid)::uuid, ({_text("%(hj)s", "%(aj)s")})::jsonb
              FROM ({rows}) r {order}""",
    }
    for table, sql in statements.items():
        t0 = time.monotonic()
        cur.execute(sql, params)
        cur.execute(f'VACUUM ANALYZE "{table}"')
        log(
            f"  loaded {table}: {cur.rowcount if cur.rowcount > 0 else ''} in "
            f"{time.monotonic() - t0:.1f} s"
        )
    small = {**params, "bg_convs": 0, "sids": [s for s in sids if s == sid_for(50)] or sids[:1]}
    small["lens"] = [50] if sid_for(50) in sids else lengths[:1]
    cur.execute(statements[TABLE].replace(f'"{TABLE}"', f'"{SMALL_TABLE}"'), small)
    cur.execute(f'VACUUM ANALYZE "{SMALL_TABLE}"')
    cur.execute(f'SELECT count(*) FROM "{TABLE}"')
    total = cur.fetchone()[0]
    conn.close()

    r = redis.Redis.from_url(redis_url)
    for pattern in ("bench:*",):
        keys = list(r.scan_iter(match=pattern, count=1000))
        for i in range(0, len(keys), 1000):
            r.delete(*keys[i : i + 1000])
    for length, sid in zip(lengths, sids, strict=True):
        msgs = [message(n, sid) for n in range(1, length + 1)]
        lc = [_lc_json(m) for m in msgs]
        floor = [_orjson(m) for m in msgs]
        pipe = r.pipeline(transaction=False)
        for i in range(0, length, 1000):
            # RedisChatMessageHistory LPUSHes: its list is newest first.
            pipe.rpush(LC_REDIS_PREFIX + sid, *reversed(lc[max(0, length - i - 1000) : length - i]))
            pipe.rpush(FLOOR_PREFIX + sid, *floor[i : i + 1000])
        pipe.execute()
    r.close()
    log(f"  loaded redis lists in {time.monotonic() - started:.1f} s since start")
    return LoadReport(
        total,
        bg_convs * BACKGROUND_CONVERSATION_LENGTH if background_rows else 0,
        time.monotonic() - started,
    )


def drop_all(database_url: str, redis_url: str) -> None:
    """Remove the bench's tables and keys from given (non-embedded) servers."""
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        for table in (TABLE, SMALL_TABLE, LC_SQL_TABLE, LC_PG_TABLE):
            cur.execute(f'DROP TABLE IF EXISTS "{table}"')
    conn.close()
    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match="bench:*", count=1000))
    for i in range(0, len(keys), 1000):
        r.delete(*keys[i : i + 1000])
    r.close()
