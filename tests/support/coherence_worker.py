"""One process of the multi-process coherence test (run as a script by test_concurrency)."""

from __future__ import annotations

import json
import random
import sys
import time

import redis
from langchain_core.messages import AIMessage, HumanMessage

from lc_hybrid_memory import HybridMemory, MessageTable


def main() -> None:
    cfg = json.loads(sys.argv[1])
    rng = random.Random(cfg["seed"])
    memory = HybridMemory.from_urls(
        redis_url=cfg["redis_url"],
        database_url=cfg["database_url"],
        table=MessageTable(name=cfg["table"]),
        prefix=cfg["prefix"],
        max_cached=cfg["max_cached"],
    )
    evictor = redis.Redis.from_url(cfg["redis_url"])
    # Widen the race window between a miss's SELECT and its fill, as a descheduled process
    # would: the lease must make concurrent writes win anyway.
    read_recent = memory.store.recent

    def slow_recent(session_id: str, limit: int) -> list:
        rows = read_recent(session_id, limit)
        time.sleep(cfg["fill_delay"])
        return rows

    memory.store.recent = slow_recent  # type: ignore[method-assign]
    sessions = cfg["sessions"]
    for step in range(cfg["ops"]):
        sid = rng.choice(sessions)
        roll = rng.random()
        if roll < 0.5:
            batch = []
            for _ in range(rng.randint(1, 3)):
                # Some messages carry ids from a small pool, so processes collide on them.
                uid = f"u{rng.randint(0, 40)}" if rng.random() < 0.3 else None
                cls = HumanMessage if rng.random() < 0.5 else AIMessage
                batch.append(cls(f"{cfg['seed']}-{step}", id=uid))
            memory.add_messages(sid, batch)
        elif roll < 0.75:
            window = rng.choice([5, 10, 20, None])
            got = memory.get_messages(sid, window)
            ids = [m.id for m in got if m.id is not None]
            assert len(ids) == len(set(ids)), "a message id appeared twice in one read"
        elif roll < 0.86:
            evictor.delete(memory.cache.key(sid))
        elif step < cfg["ops"] // 2:
            memory.clear(sid)
    print(json.dumps(memory.stats()))
    memory.close()


if __name__ == "__main__":
    main()
