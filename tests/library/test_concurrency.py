"""Several processes reading, writing, evicting and clearing shared conversations.

After any interleaving, every cached list equals the tail of its conversation in Postgres.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import redis

from lc_hybrid_memory import HybridMemory
from lc_hybrid_memory.testing import ServerURLs
from tests.support.memory_checks import assert_cache_is_tail, table_rows
from tests.support.servers import MemoryFactory

WORKER = Path(__file__).parent.parent / "support" / "coherence_worker.py"


def test_processes_keep_every_cached_list_equal_to_the_table_tail(
    servers: ServerURLs, memory_factory: MemoryFactory, unique: str, redis_client: redis.Redis
) -> None:
    memory: HybridMemory = memory_factory(max_cached=10)
    sessions = [f"shared-{i}" for i in range(4)]
    processes = []
    for seed in range(4):
        cfg = {
            "seed": seed,
            "redis_url": servers.redis_url,
            "database_url": servers.database_url,
            "table": memory.store.mapping.name,
            "prefix": memory.cache.prefix,
            "max_cached": 10,
            "sessions": sessions,
            "ops": 300,
            "fill_delay": 0.004,
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), json.dumps(cfg)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    stats = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-3000:]
        stats.append(json.loads(out.strip().splitlines()[-1]))

    # The run really raced: lists were filled, and fills lost to concurrent writes.
    assert sum(s["fills"] for s in stats) > 20
    assert sum(s["fills_dropped"] for s in stats) > 0
    assert sum(s["hits"] for s in stats) > 20
    for sid in sessions:
        assert_cache_is_tail(memory, redis_client, sid)
        rows = table_rows(memory, sid)
        ids = [json.loads(payload)["data"]["id"] for _, payload in rows]
        explicit = [i for i in ids if i is not None]
        assert len(explicit) == len(set(explicit)), "an id was stored twice"
        # And what a reader gets now matches Postgres, through the cache.
        expected = [json.loads(p)["data"]["content"] for _, p in rows][-10:]
        assert [m.content for m in memory.get_messages(sid, 10)] == expected
        assert [m.content for m in memory.get_messages(sid, 10)] == expected
