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
    assert "#### Targets (issue 5)" in table
    assert (tmp_path / "latency.png").stat().st_size > 1000

    data = json.loads((tmp_path / "results.json").read_text())
    cells = {(c["scenario"], c["length"], c["impl"]) for c in data["cells"]}
    for scenario in ("warm", "new_object", "cold", "write", "turn"):
        assert (scenario, 50, "ours") in cells
    rt = {(r["scenario"], r["impl"]): r for r in data["round_trips"]}
    # The round-trip budget of the hot path, counted on the wire.
    assert (rt["warm", "ours"]["redis"], rt["warm", "ours"]["sql"]) == (1, 0)
    assert (rt["new_object", "ours"]["redis"], rt["new_object", "ours"]["sql"]) == (1, 0)
    assert rt["construct", "ours"]["redis"] + rt["construct", "ours"]["sql"] == 0
    assert rt["write", "ours"]["redis"] == 1
