"""Results as JSON, Markdown tables (with the performance targets) and PNG charts."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .impls import LABELS, SCENARIOS
from .measure import Cell, RoundTrips

ORDER = list(LABELS)
OTHERS = ("lc_redis", "lc_sql", "lc_pg")


def _index(cells: list[Cell]) -> dict[tuple[str, int, str], Cell]:
    return {(c.scenario, c.length, c.impl): c for c in cells}


def _fmt(ms: float) -> str:
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.2f}"


def targets(
    cells: list[Cell],
    rts: list[RoundTrips],
    lengths: list[int],
    concurrency: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Each performance target: measured value, limit, met or missed."""
    c = _index(cells)
    out: list[dict[str, Any]] = []

    def p50(s: str, n: int, impl: str) -> float | None:
        cell = c.get((s, n, impl))
        return cell.p50_ms if cell else None

    def add(
        name: str,
        value: float | None,
        limit: float,
        *,
        at_least: bool = False,
        paired: float | None = None,
    ) -> None:
        if value is None:
            return
        judged = paired if paired is not None else value
        info = limit == float("inf")
        met = None if info else (judged >= limit if at_least else judged <= limit)
        out.append(
            {
                "target": name,
                "value": round(value, 3),
                "paired": round(paired, 3) if paired is not None else None,
                "limit": None if info else limit,
                "met": met,
            }
        )

    def paired(s: str, n: int, a: str, b: str) -> float | None:
        """Median over rounds of a_i / b_i (A and B ran back to back in round i)."""
        ca, cb = c.get((s, n, a)), c.get((s, n, b))
        if not ca or not cb or not ca.samples or not cb.samples:
            return None
        k = min(len(ca.samples), len(cb.samples))
        pairs = zip(ca.samples[:k], cb.samples[:k], strict=True)
        return float(np.median([x / y for x, y in pairs]))

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    base = 50 if 50 in lengths else lengths[0]
    longest = max(lengths)
    for n in lengths:
        add(
            f"warm read of {n} ≤ 1.0× bare LRANGE + messages_from_dict (p50 ratio)",
            ratio(p50("warm", n, "ours"), p50("warm", n, "floor_lrange")),
            1.0,
            paired=paired("warm", n, "ours", "floor_lrange"),
        )
    add(
        f"warm read of {base} vs one bare LRANGE round trip, no decode (p50 ratio, info)",
        ratio(p50("warm", base, "ours"), p50("warm", base, "floor_rtt")),
        float("inf"),
        paired=paired("warm", base, "ours", "floor_rtt"),
    )
    for n in lengths:
        add(
            f"a turn's write ≤ 1.15× bare INSERT + RPUSHX, {n} messages (p50 ratio)",
            ratio(p50("write", n, "ours"), p50("write", n, "floor_write")),
            1.15,
            paired=paired("write", n, "ours", "floor_write"),
        )
    for n in lengths:
        for other in ("lc_pg", "lc_sql"):
            add(
                f"a turn's write faster than {other}'s add_messages, {n} messages (ours ÷ theirs)",
                ratio(p50("write", n, "ours"), p50("write", n, other)),
                1.0,
                paired=paired("write", n, "ours", other),
            )
    add(
        f"a miss ≤ 1.2× bare indexed SELECT + fill, {base} messages (p50 ratio)",
        ratio(p50("cold", base, "ours"), p50("cold", base, "floor_miss")),
        1.2,
        paired=paired("cold", base, "ours", "floor_miss"),
    )
    if longest == base:
        longest = 0  # nothing to compare (smoke runs)
    add(
        f"flat: warm read at {longest} / at {base} messages ≤ 1.2 (p50 ratio)",
        ratio(p50("warm", longest, "ours"), p50("warm", base, "ours")),
        1.2,
    )
    add(
        f"flat: cold read at {longest} / at {base} messages ≤ 1.2 (p50 ratio)",
        ratio(p50("cold", longest, "ours"), p50("cold", base, "ours")),
        1.2,
    )
    # The same, with machine drift between the two cells taken out: each cell's p50 divided by
    # its own floor (the floor does not depend on the conversation's length).
    for scenario, floor in (("warm", "floor_lrange"), ("cold", "floor_miss")):
        add(
            f"flat, drift-corrected: {scenario} (ours ÷ {floor}) at {longest} / at {base} ≤ 1.2",
            ratio(
                ratio(p50(scenario, longest, "ours"), p50(scenario, longest, floor)),
                ratio(p50(scenario, base, "ours"), p50(scenario, base, floor)),
            ),
            1.2,
        )
    add(
        f"flat: cold read of {base}, big table / table without background rows ≤ 1.2",
        ratio(p50("cold", base, "ours"), p50("cold", base, "ours_empty")),
        1.2,
        paired=paired("cold", base, "ours", "ours_empty"),
    )
    if 5000 in lengths:
        for scenario in ("warm", "new_object"):
            for other in OTHERS:
                add(
                    f"{scenario} at 5000: {other} / ours ≥ 50× (p50 ratio)",
                    ratio(p50(scenario, 5000, other), p50(scenario, 5000, "ours")),
                    50,
                    at_least=True,
                )
        for other in OTHERS:
            # Inside a turn: the time spent in the history objects (the model and the wrapper
            # cost the same for everyone).
            mine, theirs = c.get(("turn", 5000, "ours")), c.get(("turn", 5000, other))
            if mine and theirs and mine.memory_p50_ms and theirs.memory_p50_ms:
                add(
                    f"turn at 5000, time in the history: {other} / ours ≥ 50× (p50 ratio)",
                    theirs.memory_p50_ms / mine.memory_p50_ms,
                    50,
                    at_least=True,
                )
            add(
                f"turn at 5000, whole turn incl. model + wrapper: {other} / ours (info)",
                ratio(p50("turn", 5000, other), p50("turn", 5000, "ours")),
                float("inf"),
            )
    for n in lengths:
        best = [v for v in (p50("warm", n, o) for o in OTHERS) if v is not None]
        if best:
            add(
                f"window=None at {n}: ours_full / best other ≤ 1 (warm p50 ratio)",
                ratio(p50("warm", n, "ours_full"), min(best)),
                1.0,
            )
    for rt in rts:
        if rt.scenario == "construct" and rt.impl == "ours":
            add(
                "a history object costs no round trip (redis + sql per call)",
                rt.redis + rt.sql,
                0.0,
            )
            break
    for n in lengths:
        cell = c.get(("turn", n, "ours"))
        if cell and cell.memory_p99_ms is not None:
            add(
                f"memory layer adds < 2 ms p99 to a turn, {n} messages (ms)",
                cell.memory_p99_ms,
                2.0,
            )
    for rt in rts:
        if rt.scenario == "cold" and rt.impl == "ours":
            add(f"a miss: Redis round trips ≤ 2, {rt.length} messages", rt.redis, 2.0)
    for cell in cells:
        if cell.scenario == "rw" and cell.impl == "ours" and cell.cpu_mean_ms is not None:
            add(
                f"CPU per turn (one read + one write, sync, {cell.length} messages) ≤ 0.5 ms"
                " (mean thread CPU)",
                cell.cpu_mean_ms,
                0.5,
            )
    if concurrency:
        from .concurrency import PEERS, paired_throughput_ratio

        runs = concurrency.get("runs_objects") or []
        by = {x["impl"]: x for x in concurrency["summary"]}
        mine = by.get("ours_async")
        peers = [by[p] for p in PEERS if p in by]
        if mine and peers:
            best = max(peers, key=lambda x: x["turns_per_s"])
            add(
                f"async, {concurrency['conversations']} conversations: turns/s ≥ 3× the best"
                f" peer's ({best['impl']}, median of rounds)",
                mine["turns_per_s"] / best["turns_per_s"],
                3.0,
                at_least=True,
                paired=paired_throughput_ratio(runs, "ours_async", PEERS) if runs else None,
            )
        if mine:
            add("async: p99 ≤ 3× p50 per turn (p99 ÷ p50)", mine["p99_ms"] / mine["p50_ms"], 3.0)
            add("async: CPU per turn ≤ 0.5 ms (process CPU ÷ turns)", mine["cpu_per_turn_ms"], 0.5)
        threads = by.get("ours_threads")
        if threads and peers:
            best = max(peers, key=lambda x: x["turns_per_s"])
            add(
                "sync API from 8 threads: turns/s ÷ the best async peer's (info)",
                threads["turns_per_s"] / best["turns_per_s"],
                float("inf"),
            )
    return out


def _cpu_table(cells: list[Cell]) -> list[str]:
    """Thread CPU time per call (mean / p50), at the length the ``rw`` scenario ran."""
    rw = [x for x in cells if x.scenario == "rw"]
    if not rw:
        return []
    n = rw[0].length
    c = _index(cells)
    scen = [s for s in ("warm", "cold", "write", "rw") if any(k[:2] == (s, n) for k in c)]
    lines = [
        f"#### CPU time per call at {n} messages (thread CPU, not wall): mean / p50 ms",
        "",
        "| implementation | " + " | ".join(scen) + " |",
        "|---|" + "---:|" * len(scen),
    ]
    for impl in ORDER:
        row = []
        for s in scen:
            cell = c.get((s, n, impl))
            row.append(
                f"{cell.cpu_mean_ms:.3f} / {cell.cpu_p50_ms:.3f}"
                if cell and cell.cpu_mean_ms is not None
                else ""
            )
        if any(row):
            lines.append(f"| {LABELS[impl]} | " + " | ".join(row) + " |")
    return [*lines, ""]


def concurrency_markdown(conc: dict[str, Any]) -> list[str]:
    lines = [
        f"#### Concurrency: {conc['conversations']} conversations at once, {conc['turns']}"
        " turns each (read + write of a human and an AI message per turn)",
        "",
        f"Median of {conc['rounds']} interleaved run(s) for turns/s and CPU; p50/p99 over every"
        " turn of every run. CPU per turn = the process's CPU time over the timed phase ÷ turns.",
        "",
        "| implementation | turns/s | p50 ms | p99 ms | p99 ÷ p50 | CPU per turn ms"
        " | cache errors / cache bypassed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for x in conc["summary"]:
        degraded = (
            f"{x.get('cache_errors', 0)} / {x.get('store_reads', 0)}"
            if x["impl"].startswith("ours")
            else ""
        )
        lines.append(
            f"| {x['label']} | {x['turns_per_s']:.0f} | {_fmt(x['p50_ms'])} | {_fmt(x['p99_ms'])}"
            f" | {x['p99_ms'] / x['p50_ms']:.1f} | {x['cpu_per_turn_ms']:.2f} | {degraded} |"
        )
    return [*lines, ""]


def markdown(
    cells: list[Cell],
    rts: list[RoundTrips],
    tg: list[dict[str, Any]],
    meta: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> str:
    extra = extra or {}
    c = _index(cells)
    lengths = sorted({cell.length for cell in cells})
    lines = [f"Run: {meta['date']} — {meta['mode']}", ""]
    lines += [f"- machine: {meta['machine']}", f"- servers: {meta['servers']}"]
    lines += [f"- library: lc-hybrid-memory at commit {meta.get('library', 'unknown')}"]
    lines += [f"- versions: {meta['versions']}", f"- data: {meta['data']}"]
    lines += [
        f"- load average before / after: {meta.get('load_before')} / {meta.get('load_after')}"
        f" (the machine is shared); total run {meta.get('seconds')} s",
        "",
    ]
    lines += ["Latency per call, milliseconds, **p50 / p99** (interleaved in one run).", ""]
    for scenario, title in SCENARIOS.items():
        impls = [i for i in ORDER if any((scenario, n, i) in c for n in lengths)]
        if not impls:
            continue
        lines += [f"#### {title}", ""]
        lines.append("| implementation | " + " | ".join(f"{n:,}" for n in lengths) + " |")
        lines.append("|---|" + "---:|" * len(lengths))
        for impl in impls:
            row = []
            for n in lengths:
                cell = c.get((scenario, n, impl))
                if cell is None:
                    row.append("")
                    continue
                text = f"{_fmt(cell.p50_ms)} / {_fmt(cell.p99_ms)}"
                if cell.n < 100:
                    text += f" (n={cell.n})"
                row.append(text)
            lines.append(f"| {LABELS[impl]} | " + " | ".join(row) + " |")
        if scenario == "turn":
            mem = [
                f"{n:,}: {_fmt(c[('turn', n, 'ours')].memory_p50_ms)} / "
                f"{_fmt(c[('turn', n, 'ours')].memory_p99_ms)}"
                for n in lengths
                if ("turn", n, "ours") in c and c[("turn", n, "ours")].memory_p99_ms is not None
            ]
            if mem:
                lines += [
                    "",
                    "Time inside the memory layer per turn (ours, p50 / p99 ms): " + "; ".join(mem),
                ]
        lines.append("")
    if rts:
        rt_lengths = sorted({r.length for r in rts})
        idx = {(r.scenario, r.length, r.impl): r for r in rts}
        scen = [s for s in SCENARIOS if any(r.scenario == s for r in rts)]
        at = " / ".join(f"{n:,}" for n in rt_lengths)
        lines += [
            "#### Round trips per call: Redis + SQL (counting proxy on the wire)",
            "",
            f"One figure when equal at {at} messages, else one per length; `+k conn` = new "
            "TCP connections per call.",
            "",
            "| implementation | " + " | ".join(scen) + " |",
            "|---|" + "---:|" * len(scen),
        ]
        for impl in ORDER:
            row, seen = [], False
            for s in scen:
                texts = []
                for n in rt_lengths:
                    r = idx.get((s, n, impl))
                    if r is None:
                        continue
                    text = f"{r.redis:.3g} + {r.sql:.3g}"
                    if r.connections:
                        text += f" +{r.connections:.3g} conn"
                    texts.append(text)
                seen = seen or bool(texts)
                row.append(texts[0] if len(set(texts)) == 1 else " / ".join(texts))
            if seen:
                lines.append(f"| {LABELS[impl]} | " + " | ".join(row) + " |")
        lines.append("")
    lines += _cpu_table(cells)
    if extra.get("concurrency"):
        lines += concurrency_markdown(extra["concurrency"])
    if extra.get("prototypes", {}).get("markdown"):
        lines += [extra["prototypes"]["markdown"], ""]
    lines += [
        "#### Targets",
        "",
        "Ratios of p50s; where both ran in the same rounds, also the median of the per-round",
        "ratios (A and B back to back, so machine drift cancels) — the verdict uses that one.",
        "",
        "| target | p50 ratio / value | paired ratio | limit | |",
        "|---|---:|---:|---:|---|",
    ]
    for t in tg:
        limit = "—" if t["limit"] is None else f"{t['limit']:g}"
        verdict = "" if limit == "—" else ("met" if t["met"] else "**missed**")
        pair = f"{t['paired']:.3g}" if t.get("paired") is not None else ""
        lines.append(f"| {t['target']} | {t['value']:.3g} | {pair} | {limit} | {verdict} |")
    lines.append("")
    return "\n".join(lines)


def chart(cells: list[Cell], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = _index(cells)
    lengths = sorted({cell.length for cell in cells})
    # rw runs at one length only: its figures are in the CPU table and the concurrency chart.
    scenarios = [s for s in SCENARIOS if s != "rw" and any(k[0] == s for k in c)]
    cols = 3
    rows = (len(scenarios) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(15, 4.6 * rows), squeeze=False)
    styles = {
        "ours": ("tab:green", "-", "o"),
        "ours_full": ("tab:green", "--", "s"),
        "ours_empty": ("tab:olive", ":", "x"),
        "lc_redis": ("tab:red", "-", "^"),
        "lc_sql": ("tab:purple", "-", "v"),
        "lc_pg": ("tab:blue", "-", "D"),
        "floor_rtt": ("0.6", ":", "."),
        "floor_lrange": ("0.3", ":", "."),
        "floor_select": ("0.45", "-.", "."),
        "floor_miss": ("0.3", "-.", "."),
        "floor_write": ("0.3", ":", "."),
        "floor_rw": ("0.3", "--", "."),
        "null": ("0.3", ":", "."),
    }
    for ax, scenario in zip(axes.flat, scenarios, strict=False):
        for impl in ORDER:
            pts = [(n, c[(scenario, n, impl)].p50_ms) for n in lengths if (scenario, n, impl) in c]
            if len(pts) < 1:
                continue
            color, ls, marker = styles[impl]
            ax.plot(*zip(*pts, strict=True), color=color, ls=ls, marker=marker, label=LABELS[impl])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(SCENARIOS[scenario], fontsize=10)
        ax.set_xlabel("messages in the conversation")
        ax.set_ylabel("p50 latency per call (ms)")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(scenarios) :]:
        ax.axis("off")
    handles, labels = {}, {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
            labels[label] = label
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="lower right",
        fontsize=8,
        bbox_to_anchor=(0.98, 0.04),
    )
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
    try:  # a palette PNG is a third of the size (the chart is committed as docs/bench-latency.png)
        from PIL import Image

        with Image.open(path) as image:
            small = image.convert("RGB").quantize(colors=64)
        small.save(path, optimize=True)
    except Exception:
        pass


def write_all(
    out: Path,
    cells: list[Cell],
    rts: list[RoundTrips],
    meta: dict[str, Any],
    extra: dict[str, Any],
) -> tuple[str, list[dict[str, Any]]]:
    lengths = sorted({cell.length for cell in cells})
    runs = extra.pop("concurrency_runs", None)
    if extra.get("concurrency") is not None:
        extra["concurrency"]["runs_objects"] = runs
    tg = targets(cells, rts, lengths, extra.get("concurrency"))
    if extra.get("concurrency") is not None:
        extra["concurrency"].pop("runs_objects", None)
    md = markdown(cells, rts, tg, meta, extra)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(md + extra.get("markdown_tail", ""))
    payload = {
        "meta": meta,
        "cells": [{k: v for k, v in asdict(x).items() if k != "samples"} for x in cells],
        "round_trips": [asdict(x) for x in rts],
        "targets": tg,
        **{k: v for k, v in extra.items() if k != "markdown_tail"},
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=str))
    chart(cells, out / "latency.png")
    if extra.get("concurrency"):
        concurrency_chart(extra["concurrency"], out / "concurrency.png")
    return md, tg


def concurrency_chart(conc: dict[str, Any], path: Path) -> None:
    """Bars: turns/s, p50/p99 per turn, CPU per turn, per implementation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = conc["summary"]
    names = [x["label"].replace(", ", ",\n", 1) for x in rows]
    colors = ["tab:green" if x["impl"].startswith("ours") else "tab:gray" for x in rows]
    fig, axes = plt.subplots(1, 3, figsize=(16, 0.6 * len(rows) + 2.2), sharey=True)
    y = np.arange(len(rows))
    axes[0].barh(y, [x["turns_per_s"] for x in rows], color=colors)
    axes[0].set_xlabel("turns/s (higher is better)")
    axes[1].barh(y - 0.2, [x["p50_ms"] for x in rows], height=0.4, color=colors, label="p50")
    axes[1].barh(
        y + 0.2, [x["p99_ms"] for x in rows], height=0.4, color=colors, alpha=0.45, label="p99"
    )
    axes[1].set_xlabel("latency per turn, ms: p50 (dark), p99 (light)")
    axes[2].barh(y, [x["cpu_per_turn_ms"] for x in rows], color=colors)
    axes[2].axvline(0.5, color="tab:red", ls=":", lw=1)
    axes[2].set_xlabel("CPU per turn, ms (target 0.5, dotted)")
    axes[0].set_yticks(y, names, fontsize=8)
    axes[0].invert_yaxis()
    for ax in axes:
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(
        f"{conc['conversations']} concurrent conversations × {conc['turns']} turns"
        f" (read + write per turn), median of {conc['rounds']} interleaved run(s)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
