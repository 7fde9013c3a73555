"""The benchmark harness runs end to end (seconds-long ``--smoke`` mode) and writes its table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("langchain_community")
pytest.importorskip("langchain_postgres")
pytest.importorskip("matplotlib")


def test_bench_smoke_run(servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.__main__ import main

    monkeypatch.setenv("BENCH_REDIS_URL", servers.redis_url)
    monkeypatch.setenv("BENCH_DATABASE_URL", servers.database_url)
    assert main(["--smoke", "--out", str(tmp_path)]) == 0

    table = (tmp_path / "results.md").read_text()
    assert "| lc-hybrid-memory (window=50) |" in table
    assert "| langchain-postgres PostgresChatMessageHistory |" in table
    assert "#### Targets" in table
    assert "#### CPU time per call" in table
    assert "#### Concurrency:" in table
    assert "#### Prototypes:" in table
    assert (tmp_path / "latency.png").stat().st_size > 1000
    assert (tmp_path / "concurrency.png").stat().st_size > 1000

    data = json.loads((tmp_path / "results.json").read_text())
    assert data["meta"]["library"] != "unknown"
    cells = {(c["scenario"], c["length"], c["impl"]): c for c in data["cells"]}
    for scenario in ("warm", "new_object", "cold", "write", "turn", "rw"):
        assert (scenario, 50, "ours") in cells
        assert cells[scenario, 50, "ours"]["cpu_mean_ms"] > 0
    for impl in ("lc_redis", "lc_sql", "lc_pg", "floor_rw"):
        assert ("rw", 50, impl) in cells
    rt = {(r["scenario"], r["impl"]): r for r in data["round_trips"]}
    # The round-trip budget of the hot path, counted on the wire.
    assert (rt["warm", "ours"]["redis"], rt["warm", "ours"]["sql"]) == (1, 0)
    assert (rt["new_object", "ours"]["redis"], rt["new_object", "ours"]["sql"]) == (1, 0)
    assert rt["construct", "ours"]["redis"] + rt["construct", "ours"]["sql"] == 0
    assert rt["write", "ours"]["redis"] == 1
    assert (rt["rw", "ours"]["redis"], rt["rw", "ours"]["sql"]) == (2, 1)

    # Every implementation of the concurrency load ran every turn, none of ours degraded.
    conc = data["concurrency"]
    summary = {x["impl"]: x for x in conc["summary"]}
    assert set(summary) == {
        "ours_async",
        "ours_threads",
        "lc_pg_conn",
        "lc_pg_pool",
        "lc_sql_async",
        "lc_redis_exec",
    }
    for run in conc["runs"]:
        assert run["turns"] == conc["conversations"] * conc["turns"]
        assert run["cpu_seconds"] > 0
    assert summary["ours_async"]["cache_errors"] == 0

    targets = [t["target"] for t in data["targets"]]
    for needle in ("async,", "p99 ≤ 3× p50", "CPU per turn", "faster than lc_pg", "Redis round"):
        assert any(needle in t for t in targets), needle

    # The prototypes ran every variant of every group.
    groups = data["prototypes"]["groups"]
    variants = {v["variant"] for rows in groups.values() for v in rows}
    assert {"w_lib", "w_raw_pooled", "m_lib", "m_2rt_raw", "h_script", "rw_local"} <= variants
    protos = {x["impl"] for x in data["prototypes"]["concurrency"]}
    assert {"a_lib", "a_lib_pool64_open", "a_lib_fair16", "a_raw_fair16", "t_lib"} <= protos
