"""Side-by-side prototypes: the same work as the library's hot path, done a leaner way.

Nothing here is used by the library. Each group times the library's own call next to
variants that do the same work (same table, same rows, same cache protocol) with one thing
changed, interleaved in the same rounds as the rest of the bench (``measure.time_cell``: wall
and thread-CPU time per call). The code of each variant is what the library could adopt:

* write: SQLAlchemy Core through the pool (the library) / on a held connection / the raw
  psycopg2 cursor of a pooled connection with a pre-rendered INSERT / a held psycopg2
  connection; the Redis half as the library's append script, a leaner script that checks the
  id of the row before the new ones (``APPEND_AFTER``), and a bare ``RPUSHX``;
* miss: the library's 3 Redis round trips (LRANGE, lease, fill) against one ``READ_OR_LEASE``
  script + fill (2), with the SELECT through SQLAlchemy or the raw cursor;
* async: the library's default pools against bigger pools, and a raw asyncpg + redis.asyncio
  turn (the same protocol) — 64 conversations from one event loop, as in ``concurrency``;
* CPU profiles (cProfile on a CPU clock, not wall) of a sync turn and of the async load,
  summed by package.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import concurrency as conc
from .. import dataset as ds
from ..impls import Runner
from ..measure import Budget, Cell, time_cell
from .async_load import ASYNC_LABELS, async_openers, threads_variants, wire_counts
from .cpu_profiles import cpu_profiles
from .reads import hit_runners, miss_runners, rw_runners
from .write import Setup, write_runners

# The settings a quick run compares (a full run adds the others).
QUICK_ASYNC = ("a_lib", "a_lib_pool16", "a_lib_pool64_open", "a_lib_fair16", "a_raw_fair16")

# -- running and reporting ----------------------------------------------------------------


def _time_group(
    runners: dict[str, tuple[str, Runner]], budget: Budget, name: str
) -> tuple[list[Cell], dict[str, str]]:
    cells = time_cell(name, 50, {k: r for k, (_, r) in runners.items()}, budget)
    return cells, {k: what for k, (what, _) in runners.items()}


def _paired(a: Cell, b: Cell, cpu: bool = False) -> float:
    xa, xb = (a.cpu_samples, b.cpu_samples) if cpu else (a.samples, b.samples)
    k = min(len(xa), len(xb))
    return float(np.median([x / y for x, y in zip(xa[:k], xb[:k], strict=True) if y > 0]))


def _group_md(title: str, cells: list[Cell], what: dict[str, str], ref: str) -> list[str]:
    by = {c.impl: c for c in cells}
    lines = [
        f"##### {title}",
        "",
        f"| variant | what | p50 ms | p99 ms | CPU mean ms | ÷ {ref} (paired wall) "
        f"| ÷ {ref} (CPU) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, cell in by.items():
        lines.append(
            f"| {name} | {what[name]} | {cell.p50_ms:.3f} | {cell.p99_ms:.2f} | "
            f"{cell.cpu_mean_ms:.3f} | {_paired(cell, by[ref]):.2f} | "
            f"{cell.cpu_mean_ms / by[ref].cpu_mean_ms:.2f} |"
        )
    return [*lines, ""]


def run_prototypes(
    redis_url: str,
    database_url: str,
    admin: Any,
    *,
    quick: bool,
    smoke: bool = False,
    out: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every group, side by side; a Markdown section and the raw numbers."""
    out = out or Path(__file__).parent / "results"
    if smoke:
        budget = Budget(calls=6, seconds=0.05, min_calls=2, warmup=1)
    elif quick:
        budget = Budget(calls=400, seconds=0.5, min_calls=20, warmup=10)
    else:
        budget = Budget(calls=1500, seconds=1.2, min_calls=20, warmup=20)
    sid = ds.sid_for(50)
    s = Setup(redis_url, database_url, admin)
    result: dict[str, Any] = {"groups": {}}
    md = ["#### Prototypes: the same work, a leaner way (side by side, interleaved)", ""]
    try:
        admin.memory.get_messages(sid)
        for title, make, ref in (
            ("a turn's write, 50 messages (Postgres + Redis)", write_runners, "w_lib"),
            ("a miss, 50 messages (evicted → Postgres → fill)", miss_runners, "m_lib"),
            ("a warm read, 50 messages", hit_runners, "h_lib"),
            ("a turn's memory I/O (read + write), sync, 50 messages", rw_runners, "rw_lib"),
        ):
            cells, what = _time_group(make(s, sid), budget, title)
            result["groups"][title] = [
                {
                    "variant": c.impl,
                    "what": what[c.impl],
                    "p50_ms": c.p50_ms,
                    "p99_ms": c.p99_ms,
                    "cpu_mean_ms": c.cpu_mean_ms,
                    "paired_vs_ref": _paired(c, next(x for x in cells if x.impl == ref)),
                }
                for c in cells
            ]
            md += _group_md(title, cells, what, ref)
            log(f"prototypes: {title}: " + "  ".join(f"{c.impl}={c.p50_ms:.3f}" for c in cells))
        # Async and threads: the concurrency load with each setting.
        rounds = 1 if quick else 2  # quick (and smoke): one run per setting
        conv, turns = (4, 2) if smoke else (64, 15)
        openers = async_openers(redis_url, database_url)
        runs, _ = conc.run_concurrency(
            admin, redis_url, database_url, rounds=rounds, conversations=conv, turns=turns,
            only=[n for n in openers if not quick or n in QUICK_ASYNC], extra=openers, log=log,
        )  # fmt: skip
        truns = threads_variants(
            admin, redis_url, database_url, rounds, conv, turns, log, quick=quick
        )
        summary = conc.summarize(runs + truns, ASYNC_LABELS)
        result["concurrency"] = [vars(x) for x in summary]
        result["concurrency_runs"] = [
            {k: v for k, v in vars(r).items() if k != "latencies"} for r in runs + truns
        ]
        md += [
            f"##### {conv} concurrent conversations × {turns} turns: pool settings and a raw"
            " asyncpg turn",
            "",
            "Pool wait = each `await engine.connect()` of the store (waiting for a pooled"
            " connection, or opening one), p50 / p99 ms, worst run.",
            "",
            "| variant | what | turns/s | p50 ms | p99 ms | p99 ÷ p50 | CPU per turn ms "
            "| pool wait p50 / p99 ms |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for x in summary:
            waits = [
                r.stats for r in runs if r.impl == x.impl and "checkout_wait_p99_ms" in r.stats
            ]
            wait = ""
            if waits:
                worst = max(waits, key=lambda st: st["checkout_wait_p99_ms"])
                wait = f"{worst['checkout_wait_p50_ms']:.2f} / {worst['checkout_wait_p99_ms']:.1f}"
            md.append(
                f"| {x.impl} | {x.label} | {x.turns_per_s:.0f} | {x.p50_ms:.1f} | {x.p99_ms:.1f} "
                f"| {x.p99_ms / x.p50_ms:.1f} | {x.cpu_per_turn_ms:.2f} | {wait} |"
            )
        md.append("")
        wire = wire_counts(redis_url, database_url, 3 if not smoke else 1, conv)
        used = [sid for v in wire.values() for sid in v.pop("_sids")]  # type: ignore[union-attr]
        conc.cleanup(admin, used)
        result["wire"] = wire
        md += [
            "Counted on the wire (proxy) over the same load, per turn: "
            + "; ".join(
                f"{k}: Redis {v['redis_round_trips']:.2f} round trips + "
                f"{v['redis_connections']:.3f} new connections, SQL {v['sql_round_trips']:.2f} "
                f"round trips + {v['sql_connections']:.3f} new connections"
                for k, v in wire.items()
            ),
            "",
        ]
        if not smoke:
            result["cpu_profiles"] = cpu_profiles(
                s, redis_url, database_url, out, 150 if quick else 1000
            )
            md += ["##### Where the CPU goes (cProfile on a CPU clock, self time by package)", ""]
            for name, prof in result["cpu_profiles"].items():
                top = ", ".join(
                    f"{k} {v * 100:.0f} %" for k, v in list(prof["by_package"].items())[:8]
                )
                md.append(f"- **{name}** ({Path(prof['file']).name}): {top}")
            md.append("")
        log("prototypes done")
    finally:
        s.close()
    result["markdown"] = "\n".join(md)
    return result
