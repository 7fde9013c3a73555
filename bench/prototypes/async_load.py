"""Prototypes of the concurrency load: pool settings, fair gating, a raw asyncpg turn."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import redis
from langchain_core.messages import BaseMessage

from lc_hybrid_memory import HybridMemory, MessageTable, codec

from .. import concurrency as conc
from .. import dataset as ds
from .lean import (
    APPEND_AFTER,
    CAP,
    FILL,
    LEASE_MS,
    READ_OR_LEASE,
    TTL_MS,
    decode_entries,
    encode_rows,
    entries_for,
    fill_args,
    insert_sql,
    select_sql,
)

# -- async ---------------------------------------------------------------------------------


class _TimedCheckouts:
    """Stands in for the store's async engine and times each ``await engine.connect()``: the
    wait for a pooled connection (plus, when the pool opens one, the connect itself)."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.waits: list[float] = []

    def connect(self) -> Any:
        timed = self

        class Timed:
            def __init__(self) -> None:
                self.inner = timed._engine.connect()

            def __await__(self) -> Any:
                t0 = time.perf_counter()
                conn = yield from self.inner.__await__()
                timed.waits.append(time.perf_counter() - t0)
                return conn

        return Timed()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def _with_checkout_waits(memory: HybridMemory) -> Callable[[], dict[str, Any]]:
    """The memory's stats plus checkout waits (p50/p99/max ms), where the store exposes its
    async engine as ``async_engine`` (otherwise the stats alone)."""
    store = memory.store
    engine = getattr(store, "async_engine", None)
    if engine is None or not hasattr(engine, "connect"):
        return memory.stats
    timed = _TimedCheckouts(engine)
    try:
        store.async_engine = timed
    except AttributeError:  # a store whose engine is not a plain attribute: no wait times
        return memory.stats

    def stats() -> dict[str, Any]:
        out = dict(memory.stats())
        if timed.waits:
            w = np.asarray(timed.waits) * 1e3
            out["checkout_wait_p50_ms"] = float(np.percentile(w, 50))
            out["checkout_wait_p99_ms"] = float(np.percentile(w, 99))
            out["checkout_wait_max_ms"] = float(w.max())
        timed.waits.clear()
        return out

    return stats


async def _prewarm(memory: HybridMemory, connections: int) -> None:
    """Open ``connections`` pooled connections now (``connections`` concurrent reads), so that
    none is opened while the load runs (SQLAlchemy's pool has no ``min_size``)."""
    await asyncio.gather(*(memory.store.arecent("bench-prewarm", 1) for _ in range(connections)))


def async_openers(redis_url: str, database_url: str) -> dict[str, conc.Opener]:
    def lib_with(prewarm: int = 0, **engine_kwargs: Any) -> conc.Opener:
        async def opener() -> tuple:
            memory = HybridMemory.from_urls(
                redis_url=redis_url,
                database_url=database_url,
                table=MessageTable(name=ds.TABLE),
                prefix=ds.PREFIX,
                engine_kwargs=engine_kwargs,
            )
            if prewarm:
                await _prewarm(memory, prewarm)
            return memory.history, memory.aclose, _with_checkout_waits(memory)

        return opener

    def lib_bounded_redis(size: int, redis_connections: int) -> conc.Opener:
        """Pool ``size`` + 0 and an async Redis pool that never holds more than
        ``redis_connections`` (a burst waits for a connection instead of opening one each)."""

        async def opener() -> tuple:
            import redis.asyncio as aredis

            from lc_hybrid_memory import MessageCache, MessageStore

            store = MessageStore.from_url(
                database_url,
                table=MessageTable(name=ds.TABLE),
                pool_size=size,
                max_overflow=0,
            )
            client = redis.Redis.from_url(redis_url, socket_timeout=0.25)
            pool = aredis.BlockingConnectionPool.from_url(
                redis_url, max_connections=redis_connections, timeout=1.0, socket_timeout=0.25
            )
            aclient = aredis.Redis(connection_pool=pool)
            memory = HybridMemory(store, MessageCache(client, aclient, prefix=ds.PREFIX))

            async def close() -> None:
                await store.aclose()
                await aclient.aclose()
                await pool.disconnect()
                client.close()

            return memory.history, close, _with_checkout_waits(memory)

        return opener

    def lib_fair(size: int) -> conc.Opener:
        async def opener() -> tuple:
            memory = HybridMemory.from_urls(
                redis_url=redis_url,
                database_url=database_url,
                table=MessageTable(name=ds.TABLE),
                prefix=ds.PREFIX,
                engine_kwargs={"pool_size": size, "max_overflow": 0},
            )
            await _prewarm(memory, size)
            gate = asyncio.Semaphore(size)  # FIFO: no coroutine ever queues inside the pool

            class Gated:
                def __init__(self, sid: str) -> None:
                    self.history = memory.history(sid)

                async def aget_messages(self) -> list[BaseMessage]:
                    async with gate:
                        return await self.history.aget_messages()

                async def aadd_messages(self, messages: list[BaseMessage]) -> None:
                    async with gate:
                        await self.history.aadd_messages(messages)

            return Gated, memory.aclose, _with_checkout_waits(memory)

        return opener

    def raw_with(size: int, gated: bool = False) -> conc.Opener:
        async def opener() -> tuple:
            return await raw(size, gated)

        return opener

    async def raw(size: int, gated: bool) -> tuple:
        import asyncpg
        import redis.asyncio as aredis

        pool = await asyncpg.create_pool(
            database_url, min_size=size, max_size=size, server_settings={"enable_bitmapscan": "off"}
        )
        r = aredis.Redis.from_url(redis_url)
        read_or_lease = r.register_script(READ_OR_LEASE)
        fill = r.register_script(FILL)
        append_after = r.register_script(APPEND_AFTER)
        sel = select_sql(ds.TABLE, "$")
        prefix = ds.PREFIX
        gate = asyncio.Semaphore(size) if gated else None

        async def fetch(sql: str, *args: Any) -> list:
            if gate is None:
                return await pool.fetch(sql, *args)
            async with gate:  # FIFO: nobody waits inside asyncpg's pool queue
                return await pool.fetch(sql, *args)

        after_sql = {
            n: (
                f'WITH prev AS (SELECT id FROM "{ds.TABLE}" WHERE conversation_id >= $1 AND '
                "conversation_id <= $1 ORDER BY conversation_id DESC, id DESC LIMIT 1), "
                f"ins AS ({insert_sql(ds.TABLE, n, placeholder='$')}) "
                "SELECT ins.id, ins.message_uid, (SELECT id FROM prev) FROM ins"
            )
            for n in (1, 2)
        }

        class RawHistory:
            """The library's protocol on asyncpg + redis.asyncio directly."""

            def __init__(self, sid: str) -> None:
                self.sid = sid
                self.keys = [f"{prefix}{{{sid}}}", f"{prefix}{{{sid}}}:fill"]

            async def aget_messages(self) -> list[BaseMessage]:
                got = await read_or_lease(keys=self.keys, args=[secrets.token_hex(8), LEASE_MS])
                if got and got[0]:
                    return decode_entries(got)
                rows = await fetch(sel, self.sid, CAP + 1)
                rows = [(r[0], r[1]) for r in reversed(rows)]
                complete = len(rows) < CAP + 1
                if not complete:
                    rows = rows[1:]
                if len(got) > 1:
                    token = got[1].decode()
                    await fill(keys=self.keys, args=fill_args(token, rows, complete))
                return [codec.decode(p) for _, p in rows[-CAP:]]

            async def aadd_messages(self, messages: list[BaseMessage]) -> None:
                params, payloads = encode_rows(self.sid, messages)
                # conversation ids repeat in params; $1 is reused for the prev lookup
                rows = await fetch(after_sql[len(messages)], *params)
                got = {r[1]: r[0] for r in rows}
                prev = rows[0][2] if rows else 0
                new = [(got[params[5 * k + 4]], p) for k, p in enumerate(payloads)]
                args = [CAP, TTL_MS, prev or 0, *entries_for(new)]
                if await append_after(keys=self.keys, args=args) != len(new):
                    raise AssertionError("the append was dropped: the prototype skipped work")

        async def close() -> None:
            await r.aclose()
            await pool.close()

        return RawHistory, close

    return {
        "a_lib": lib_with(),
        "a_lib_pool16": lib_with(pool_size=16, max_overflow=0),
        "a_lib_pool64": lib_with(pool_size=64, max_overflow=0),
        "a_lib_pool64_open": lib_with(prewarm=64, pool_size=64, max_overflow=0),
        "a_lib_fair16": lib_fair(16),
        "a_lib_pool64_redis16": lib_bounded_redis(64, 16),
        "a_raw_asyncpg": raw_with(16),
        "a_raw_fair16": raw_with(16, gated=True),
        "a_raw_asyncpg64": raw_with(64),
    }


ASYNC_LABELS = {
    "a_lib": "the library's async API, default pools (SQLAlchemy pool_size 5 + overflow 10)",
    "a_lib_pool16": "the same, `engine_kwargs={'pool_size': 16, 'max_overflow': 0}`",
    "a_lib_pool64": "the same, `engine_kwargs={'pool_size': 64, 'max_overflow': 0}`",
    "a_lib_pool64_open": "pool 64 + 0, its 64 connections opened before the load",
    "a_lib_fair16": "pool 16 + 0 opened before the load, each call behind a FIFO"
    " `asyncio.Semaphore(16)`",
    "a_lib_pool64_redis16": "pool 64 + 0 and a `BlockingConnectionPool` of 16 for async Redis",
    "a_raw_asyncpg": "asyncpg pool (16) + redis.asyncio, READ_OR_LEASE/APPEND_AFTER, no SQLAlchemy",
    "a_raw_asyncpg64": "the same with an asyncpg pool of 64",
    "a_raw_fair16": "asyncpg pool (16) behind a FIFO `asyncio.Semaphore(16)`, no SQLAlchemy",
    "t_lib": "the library's sync API from 8 threads, default pool (5 + overflow 10)",
    "t_lib_pool8": "the same, `engine_kwargs={'pool_size': 8}`",
}


def wire_counts(redis_url: str, database_url: str, turns: int, conversations: int) -> dict:
    """Connections opened and round trips per turn of the async load, counted on the wire."""
    from urllib.parse import urlsplit

    from ..proxy import CountingProxy, proxied_url

    out: dict[str, dict[str, float]] = {}
    rp_parts, pp_parts = urlsplit(redis_url), urlsplit(database_url)
    for name in ("a_lib", "a_lib_pool64"):
        rp = CountingProxy(rp_parts.hostname, rp_parts.port or 6379)
        pp = CountingProxy(pp_parts.hostname, pp_parts.port or 5432)
        try:
            openers = async_openers(
                proxied_url(redis_url, rp.port), proxied_url(database_url, pp.port)
            )
            tag = f"wire-{uuid.uuid4().hex[:6]}-{name}"

            r0, p0, r1, p1, n, sids = asyncio.run(
                _counted_load(openers[name], rp, pp, tag, conversations, turns)
            )
            out[name] = {
                "redis_round_trips": (r1.round_trips - r0.round_trips) / n,
                "sql_round_trips": (p1.round_trips - p0.round_trips) / n,
                "redis_connections": (r1.connections - r0.connections) / n,
                "sql_connections": (p1.connections - p0.connections) / n,
            }
            out[name]["_sids"] = sids  # type: ignore[assignment]
        finally:
            rp.close()
            pp.close()
    return out


async def _counted_load(
    opener: conc.Opener, rp: Any, pp: Any, tag: str, conversations: int, turns: int
) -> tuple:
    factory, close, *_ = await opener()
    try:
        warm = [f"{conc.SID_PREFIX}{tag}-warm-{i}" for i in range(conversations)]
        await asyncio.gather(*(conc._conversation(factory, s, 1, []) for s in warm))
        await asyncio.sleep(0.05)  # let the proxy's pump threads see the last replies
        r0, p0 = rp.snapshot(), pp.snapshot()
        sids = [f"{conc.SID_PREFIX}{tag}-{i}" for i in range(conversations)]
        lat: list[float] = []
        await asyncio.gather(*(conc._conversation(factory, s, turns, lat) for s in sids))
        await asyncio.sleep(0.05)
        r1, p1 = rp.snapshot(), pp.snapshot()
    finally:
        await close()
    return r0, p0, r1, p1, len(lat), warm + sids


def threads_variants(
    admin, redis_url, database_url, rounds, conv, turns, log, *, quick: bool = False
) -> list:
    runs = []
    tag0 = uuid.uuid4().hex[:6]
    used: list[str] = []
    for r in range(rounds):
        settings = [("t_lib", {}), ("t_lib_pool8", {"pool_size": 8})]
        for name, kwargs in settings[:1] if quick else settings:
            seconds, cpu, lat, sids, counts = conc.threads_run(
                redis_url, database_url, f"{tag0}-{name}-{r}", conv, turns, kwargs
            )
            used += sids
            runs.append(conc.Run(name, r, len(lat), seconds, cpu, lat, stats=counts))
            log(f"prototypes {name} round {r}: {len(lat) / seconds:.0f} turns/s")
    conc.cleanup(admin, used)
    return runs
