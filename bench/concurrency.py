"""Concurrency: 64 conversations at once, 15 turns each (one read + one write per turn).

Async implementations run from one event loop (``asyncio.run`` per run, everything created
inside that loop); our sync API runs the same workload from 8 threads. A turn is
``aget_messages()`` then ``aadd_messages([human, ai])`` on the conversation's history object
(one object per conversation, created in its first turn). Per run: turns/s over the timed
phase, latency per turn (p50/p99) and CPU per turn = the process's CPU time over the timed
phase / turns (CPU, not wall: on a shared machine, wall time also counts other processes; the
servers are other processes and are not counted).

Runs are interleaved: round r runs every implementation once, in an order rotated per round,
so machine drift hits all of them alike; ratios are taken per round and their median reported.
Every run first opens its pools with one untimed turn on 64 other conversations. Rows and keys
of the runs are deleted afterwards (untimed).
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import dataset as ds
from .impls import new_turn_messages

CONVERSATIONS = 64
TURNS = 15
THREADS = 8
SID_PREFIX = "bench-conc-"

LABELS = {
    "ours_async": "lc-hybrid-memory, async API (one event loop)",
    "ours_threads": "lc-hybrid-memory, sync API from 8 threads",
    "lc_pg_conn": "langchain-postgres, async, one AsyncConnection (as documented)",
    "lc_pg_pool": "langchain-postgres, async, AsyncConnectionPool (16), a connection per turn",
    "lc_sql_async": "langchain-community SQLChatMessageHistory, AsyncEngine (asyncpg)",
    "lc_redis_exec": "langchain-community RedisChatMessageHistory (default executor)",
}
PEERS = ("lc_pg_conn", "lc_pg_pool", "lc_sql_async", "lc_redis_exec")


@dataclass
class Run:
    impl: str
    round: int
    turns: int
    seconds: float
    cpu_seconds: float
    latencies: list[float] = field(repr=False)  # seconds per turn
    errors: int = 0
    stats: dict[str, Any] = field(default_factory=dict)  # ours: cache events during the run

    @property
    def turns_per_s(self) -> float:
        return self.turns / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_turn_ms(self) -> float:
        return self.cpu_seconds / self.turns * 1e3 if self.turns else 0.0


@dataclass
class Summary:
    impl: str
    label: str
    runs: int
    turns_per_s: float  # median over runs
    p50_ms: float  # over every turn of every run
    p99_ms: float
    cpu_per_turn_ms: float  # median over runs
    errors: int
    cache_errors: int = 0  # ours: Redis calls that failed (timeouts...) over all runs
    store_reads: int = 0  # ours: reads served by Postgres with the cache skipped or short


# An async implementation: ``open()`` (in the running loop) returns
# (history factory, close[, stats]); ``stats()`` (ours) gives the memory's event counters.
History = Any
Opener = Callable[[], Awaitable[tuple[Callable[[str], Any], Callable[[], Awaitable[None]]]]]


def _openers(redis_url: str, database_url: str) -> dict[str, Opener]:
    async def ours() -> tuple:
        from lc_hybrid_memory import HybridMemory, MessageTable

        memory = HybridMemory.from_urls(
            redis_url=redis_url,
            database_url=database_url,
            table=MessageTable(name=ds.TABLE),
            prefix=ds.PREFIX,
        )
        return memory.history, memory.aclose, memory.stats

    async def lc_pg_conn() -> tuple:
        import psycopg
        from langchain_postgres import PostgresChatMessageHistory

        conn = await psycopg.AsyncConnection.connect(database_url)

        def factory(sid: str) -> History:
            return PostgresChatMessageHistory(
                ds.LC_PG_TABLE, ds.uuid_for(sid), async_connection=conn
            )

        return factory, conn.close

    async def lc_pg_pool() -> tuple:
        from langchain_postgres import PostgresChatMessageHistory
        from psycopg_pool import AsyncConnectionPool

        pool = AsyncConnectionPool(database_url, min_size=16, max_size=16, open=False)
        await pool.open(wait=True)

        class PooledHistory:
            """A connection from the pool for each call (the history takes one connection)."""

            def __init__(self, sid: str) -> None:
                self.key = ds.uuid_for(sid)

            async def aget_messages(self) -> list:
                async with pool.connection() as conn:
                    h = PostgresChatMessageHistory(ds.LC_PG_TABLE, self.key, async_connection=conn)
                    return await h.aget_messages()

            async def aadd_messages(self, messages: list) -> None:
                async with pool.connection() as conn:
                    h = PostgresChatMessageHistory(ds.LC_PG_TABLE, self.key, async_connection=conn)
                    await h.aadd_messages(messages)

        return PooledHistory, pool.close

    async def lc_sql_async() -> tuple:
        import warnings

        from langchain_community.chat_message_histories import SQLChatMessageHistory
        from sqlalchemy.ext.asyncio import create_async_engine

        from lc_hybrid_memory import async_url

        engine = create_async_engine(async_url(database_url))

        def factory(sid: str) -> History:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return SQLChatMessageHistory(sid, connection=engine, table_name=ds.LC_SQL_TABLE)

        return factory, engine.dispose

    async def lc_redis_exec() -> tuple:
        from langchain_community.chat_message_histories import RedisChatMessageHistory

        clients: list[Any] = []

        def factory(sid: str) -> History:
            h = RedisChatMessageHistory(sid, url=redis_url, key_prefix=ds.LC_REDIS_PREFIX)
            clients.append(h.redis_client)
            return h

        async def close() -> None:
            for client in clients:
                client.close()

        return factory, close

    return {
        "ours_async": ours,
        "lc_pg_conn": lc_pg_conn,
        "lc_pg_pool": lc_pg_pool,
        "lc_sql_async": lc_sql_async,
        "lc_redis_exec": lc_redis_exec,
    }


async def _conversation(factory: Callable[[str], Any], sid: str, turns: int, out: list) -> None:
    history = None
    for _ in range(turns):
        batch = new_turn_messages()
        t0 = time.perf_counter()
        if history is None:
            history = factory(sid)
        await history.aget_messages()
        await history.aadd_messages(batch)
        out.append(time.perf_counter() - t0)


async def _async_run(
    name: str, opener: Opener, tag: str, conversations: int, turns: int
) -> tuple[float, float, list[float], list[str], dict[str, Any]]:
    factory, close, *rest = await opener()
    stats = rest[0] if rest else None
    try:
        warm = [f"{SID_PREFIX}{tag}-warm-{i}" for i in range(conversations)]
        await asyncio.gather(*(_conversation(factory, s, 1, []) for s in warm))
        sids = [f"{SID_PREFIX}{tag}-{i}" for i in range(conversations)]
        latencies: list[float] = []
        gc.collect()
        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(_conversation(factory, s, turns, latencies) for s in sids))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        counts = _cache_events(stats() if stats else {})
    finally:
        await close()
    return seconds, cpu, latencies, warm + sids, counts


def _degraded(counts: dict[str, Any]) -> bool:
    return bool(counts.get("cache_errors") or counts.get("cache_skipped"))


def _cache_events(stats: dict[str, Any]) -> dict[str, Any]:
    """The counters that show a degraded run (cache errors, breaker, reads from Postgres)."""
    keys = ("hits", "misses", "store_reads", "cache_errors", "cache_skipped", "breaker_opened")
    return {k: v for k, v in stats.items() if k in keys or k.startswith("checkout_")}


def threads_run(
    redis_url: str,
    database_url: str,
    tag: str,
    conversations: int,
    turns: int,
    engine_kwargs: dict[str, Any] | None = None,
) -> tuple[float, float, list[float], list[str]]:
    """Our sync API: the same load from ``THREADS`` threads (a conversation per task)."""
    from lc_hybrid_memory import HybridMemory, MessageTable

    memory = HybridMemory.from_urls(
        redis_url=redis_url,
        database_url=database_url,
        table=MessageTable(name=ds.TABLE),
        prefix=ds.PREFIX,
        engine_kwargs=engine_kwargs,
    )

    def conversation(sid: str, n: int, out: list) -> None:
        history = None
        for _ in range(n):
            batch = new_turn_messages()
            t0 = time.perf_counter()
            if history is None:
                history = memory.history(sid)
            history.messages  # noqa: B018 - the read
            history.add_messages(batch)
            out.append(time.perf_counter() - t0)  # list.append is atomic under the GIL

    try:
        with ThreadPoolExecutor(THREADS) as pool:
            warm = [f"{SID_PREFIX}{tag}-warm-{i}" for i in range(conversations)]
            list(pool.map(lambda s: conversation(s, 1, []), warm))
            sids = [f"{SID_PREFIX}{tag}-{i}" for i in range(conversations)]
            latencies: list[float] = []
            gc.collect()
            c0, t0 = time.process_time(), time.perf_counter()
            list(pool.map(lambda s: conversation(s, turns, latencies), sids))
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            counts = _cache_events(memory.stats())
    finally:
        memory.close()
    return seconds, cpu, latencies, warm + sids, counts


def cleanup(admin: Any, sids: list[str]) -> None:
    """Delete the runs' rows and keys (untimed, direct connections)."""
    if not sids:
        return
    admin.sql(f'DELETE FROM "{ds.TABLE}" WHERE conversation_id = ANY(%s)', sids)
    admin.sql(f'DELETE FROM "{ds.LC_SQL_TABLE}" WHERE session_id = ANY(%s)', sids)
    uuids = [ds.uuid_for(s) for s in sids]
    admin.sql(f'DELETE FROM "{ds.LC_PG_TABLE}" WHERE session_id = ANY(%s::uuid[])', uuids)
    for pattern in (f"{ds.PREFIX}*{SID_PREFIX}*", f"{ds.LC_REDIS_PREFIX}{SID_PREFIX}*"):
        keys = list(admin.redis.scan_iter(match=pattern, count=1000))
        for i in range(0, len(keys), 1000):
            admin.redis.delete(*keys[i : i + 1000])


def run_concurrency(
    admin: Any,
    redis_url: str,
    database_url: str,
    *,
    rounds: int,
    conversations: int = CONVERSATIONS,
    turns: int = TURNS,
    only: list[str] | None = None,
    extra: dict[str, Opener] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[Run], list[Summary]]:
    """Every implementation ``rounds`` times, interleaved; the runs and their summaries."""
    openers = _openers(redis_url, database_url)
    openers.update(extra or {})
    names = [*openers, "ours_threads"]
    if only:
        names = [n for n in names if n in only]
    runs: list[Run] = []
    used: list[str] = []
    run_id = uuid.uuid4().hex[:6]
    try:
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                tag = f"{run_id}-{name}-{r}"
                if name == "ours_threads":
                    seconds, cpu, lat, sids, counts = threads_run(
                        redis_url, database_url, tag, conversations, turns
                    )
                else:
                    seconds, cpu, lat, sids, counts = asyncio.run(
                        _async_run(name, openers[name], tag, conversations, turns)
                    )
                used += sids
                run = Run(name, r, len(lat), seconds, cpu, lat, stats=counts)
                runs.append(run)
                log(
                    f"concurrency {name:14} round {r}: {run.turns_per_s:6.0f} turns/s, "
                    f"p50 {np.percentile(lat, 50) * 1e3:6.1f} ms, "
                    f"p99 {np.percentile(lat, 99) * 1e3:6.1f} ms, "
                    f"CPU {run.cpu_per_turn_ms:.2f} ms/turn"
                    + (
                        f" {counts}"
                        if counts.get("cache_errors") or counts.get("store_reads")
                        else ""
                    )
                )
    finally:
        cleanup(admin, used)
    return runs, summarize(runs)


def summarize(runs: list[Run], labels: dict[str, str] | None = None) -> list[Summary]:
    labels = {**LABELS, **(labels or {})}
    out = []
    for name in dict.fromkeys(r.impl for r in runs):
        mine = [r for r in runs if r.impl == name]
        lat = np.asarray([x for r in mine for x in r.latencies]) * 1e3
        out.append(
            Summary(
                name,
                labels.get(name, name),
                len(mine),
                float(np.median([r.turns_per_s for r in mine])),
                float(np.percentile(lat, 50)),
                float(np.percentile(lat, 99)),
                float(np.median([r.cpu_per_turn_ms for r in mine])),
                sum(r.errors for r in mine),
                sum(r.stats.get("cache_errors", 0) for r in mine),
                sum(r.stats.get("cache_skipped", 0) + r.stats.get("store_reads", 0) for r in mine),
            )
        )
    return out


def paired_throughput_ratio(runs: list[Run], a: str, others: tuple[str, ...]) -> float | None:
    """Median over rounds of turns/s of ``a`` ÷ the best of ``others`` in the same round."""
    ratios = []
    for r in sorted({run.round for run in runs}):
        mine = [x for x in runs if x.round == r and x.impl == a]
        theirs = [x.turns_per_s for x in runs if x.round == r and x.impl in others]
        if mine and theirs:
            ratios.append(mine[0].turns_per_s / max(theirs))
    return float(np.median(ratios)) if ratios else None
