"""CPU profiles (cProfile on a CPU clock, not wall), self time summed by package."""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import time
import uuid
from pathlib import Path
from typing import Any

from .. import concurrency as conc
from .. import dataset as ds
from ..impls import new_turn_messages
from .async_load import async_openers
from .write import Setup

# -- CPU profiles ----------------------------------------------------------------------------


def _package(filename: str) -> str:
    for name in (
        "sqlalchemy",
        "psycopg2",
        "asyncpg",
        "redis",
        "hiredis",
        "lc_hybrid_memory/codec",
        "lc_hybrid_memory",
        "langchain_core",
        "pydantic",
        "orjson",
        "asyncio",
        "greenlet",
        "uuid",
        "bench",
    ):
        if f"/{name}" in filename or filename.startswith(name):
            return name.replace("lc_hybrid_memory/codec", "lc_hybrid_memory.codec")
    if filename.startswith("<") or filename == "~":
        return "builtins (C calls: sockets, str, dict...)"
    return "stdlib / other"


def _profile_summary(prof: cProfile.Profile, path: Path, title: str) -> dict[str, Any]:
    stats = pstats.Stats(prof)
    total = sum(v[2] for v in stats.stats.values())  # tottime
    by_pkg: dict[str, float] = {}
    for (filename, _line, _func), v in stats.stats.items():
        by_pkg[_package(filename)] = by_pkg.get(_package(filename), 0.0) + v[2]
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(40)
    buf2 = io.StringIO()
    pstats.Stats(prof, stream=buf2).sort_stats("cumulative").print_stats(60)
    path.write_text(
        f"{title}\nCPU clock; total {total:.3f} s\n\nby package (self time):\n"
        + "\n".join(
            f"  {k:45} {v / total * 100:5.1f} %"
            for k, v in sorted(by_pkg.items(), key=lambda kv: -kv[1])
        )
        + "\n\n"
        + buf.getvalue()
        + "\n"
        + buf2.getvalue()
    )
    return {
        "total_s": total,
        "by_package": {k: v / total for k, v in sorted(by_pkg.items(), key=lambda kv: -kv[1])},
        "file": str(path),
    }


def cpu_profiles(s: Setup, redis_url: str, database_url: str, out: Path, n: int) -> dict:
    sid = ds.sid_for(50)
    admin = s.admin
    base = admin.max_id(ds.TABLE, "conversation_id", sid)
    history = s.memory.history(sid)
    history.messages  # noqa: B018 - warm
    out.mkdir(parents=True, exist_ok=True)
    profiles = {}
    # Sync: one read + one write per turn (the undo is outside the profile).
    prof = cProfile.Profile(time.thread_time_ns, 1e-9)
    for _ in range(n):
        batch = new_turn_messages()
        prof.enable()
        history.messages  # noqa: B018
        history.add_messages(batch)
        prof.disable()
        admin.trim(ds.TABLE, "conversation_id", sid, base)
        admin.memory.cache.invalidate(sid)
        admin.memory.get_messages(sid)
    profiles["sync_turn"] = _profile_summary(
        prof, out / "profile-cpu-sync-turn.txt", f"{n} sync turns (read + write) of the library"
    )
    # Async: the 64-conversation load, one event loop.
    openers = async_openers(redis_url, database_url)
    tag = f"prof-{uuid.uuid4().hex[:6]}"
    aprof = cProfile.Profile(time.process_time_ns, 1e-9)
    turns = max(3, n // 64)

    async def go() -> list[str]:
        factory, close, *_ = await openers["a_lib"]()
        try:
            warm = [f"{conc.SID_PREFIX}{tag}-warm-{i}" for i in range(64)]
            await asyncio.gather(*(conc._conversation(factory, x, 1, []) for x in warm))
            sids = [f"{conc.SID_PREFIX}{tag}-{i}" for i in range(64)]
            aprof.enable()
            await asyncio.gather(*(conc._conversation(factory, x, turns, []) for x in sids))
            aprof.disable()
        finally:
            await close()
        return warm + sids

    used = asyncio.run(go())
    conc.cleanup(admin, used)
    profiles["async_load"] = _profile_summary(
        aprof,
        out / "profile-cpu-async-load.txt",
        f"64 conversations x {turns} turns, the library's async API, one event loop",
    )
    return profiles
