"""Stateful property test of the cache protocol on real Redis and Postgres.

Hypothesis interleaves writes (with and without ids, duplicates included), reads of several
windows, clears, evictions, real expiries, and *slow concurrent fills*: a reader that took the
lease and read Postgres, then completes its fill many steps later; commits whose acknowledgement
is lost on the wire (retried by the library, or failed and retried by the caller); and another
process that writes while it cannot reach Redis and dies, followed by the next write of a healthy
one. After every step the cached list must equal the tail of the table, and every read must
equal the model.
"""

from __future__ import annotations

import itertools
import time
import uuid

import redis
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from lc_hybrid_memory import HybridMemory, StoreUnavailableError
from lc_hybrid_memory.testing import ServerURLs
from tests.support.fault_proxy import WRITE_ON_THE_WIRE, FaultProxy
from tests.support.memory_checks import assert_cache_is_tail
from tests.support.servers import MemoryFactory

CAP = 5


def test_cache_equals_table_tail_under_any_interleaving(
    memory_factory: MemoryFactory, redis_client: redis.Redis, servers: ServerURLs
) -> None:
    memory: HybridMemory = memory_factory(max_cached=CAP)
    url = sa.engine.make_url(servers.database_url)
    proxy = FaultProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    # The same table and keys, through a wire that can lose a commit's acknowledgement...
    lossy: HybridMemory = memory_factory(max_cached=CAP, database_url=proxied)
    # ...and a process that cannot reach Redis at all.
    cut_off: HybridMemory = memory_factory(
        max_cached=CAP, redis_url="redis://127.0.0.1:1/0", redis_timeout=0.05
    )
    counter = itertools.count()

    class CacheProtocol(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.sid = f"prop-{uuid.uuid4().hex[:8]}"
            self.model: list[BaseMessage] = []
            self.pending: list[tuple[str, list, bool]] = []

        def _known_ids(self) -> set[str]:
            return {m.id for m in self.model if m.id is not None}

        @rule(sizes=st.lists(st.sampled_from([None, "a", "b", "c", "d"]), min_size=1, max_size=3))
        def write(self, sizes: list[str | None]) -> None:
            batch: list[BaseMessage] = []
            for uid in sizes:
                cls = HumanMessage if next(counter) % 2 else AIMessage
                batch.append(cls(f"msg-{next(counter)}", id=uid))
            new_flags = memory.add_messages(self.sid, batch)
            known = self._known_ids()
            expected_flags = []
            for message in batch:
                is_new = message.id is None or message.id not in known
                expected_flags.append(is_new)
                if is_new:
                    self.model.append(message)
                    if message.id is not None:
                        known.add(message.id)
            assert new_flags == expected_flags

        def _fresh(self, count: int) -> list[BaseMessage]:
            return [
                HumanMessage(f"msg-{next(counter)}", id=f"u-{next(counter)}") for _ in range(count)
            ]

        @rule(count=st.integers(1, 3), losses=st.sampled_from([1, 2]), retry=st.booleans())
        def commit_then_lose_the_reply(self, count: int, losses: int, retry: bool) -> None:
            batch = self._fresh(count)
            proxy.lose_reply_after(WRITE_ON_THE_WIRE, times=losses)
            try:
                assert lossy.add_messages(self.sid, batch) == [False] * count  # library retried
            except StoreUnavailableError:
                assert losses == 2  # the retry was lost too: the caller may retry
                if retry:
                    assert memory.add_messages(self.sid, batch) == [False] * count
            self.model.extend(batch)  # committed either way

        @rule(count=st.integers(1, 3))
        def writer_dies_while_redis_is_away_then_another_writes(self, count: int) -> None:
            batch = self._fresh(count)
            assert cut_off.add_messages(self.sid, batch) == [True] * count
            self.model.extend(batch)
            # That process dies with its pending invalidation; the next write anywhere must
            # not extend the stale list.
            after = self._fresh(1)
            assert memory.add_messages(self.sid, after) == [True]
            self.model.extend(after)

        @rule(window=st.sampled_from([1, 3, CAP, CAP + 2, None]))
        def read(self, window: int | None) -> None:
            got = memory.get_messages(self.sid, window)
            expected = self.model if window is None else self.model[-window:]
            assert [(m.content, m.id) for m in got] == [(m.content, m.id) for m in expected]

        @rule()
        def clear(self) -> None:
            memory.clear(self.sid)
            self.model = []

        @rule()
        def evict(self) -> None:
            redis_client.delete(memory.cache.key(self.sid))

        @rule()
        def expire(self) -> None:
            redis_client.pexpire(memory.cache.key(self.sid), 1)
            time.sleep(0.003)

        @rule()
        def slow_fill_starts(self) -> None:
            # A concurrent reader missed: it takes the lease (if free) and reads Postgres...
            if redis_client.exists(memory.cache.key(self.sid)):
                return
            token = memory.cache.begin_fill(self.sid)
            if token is None:
                return
            rows = memory.store.recent(self.sid, CAP + 1)
            complete = len(rows) <= CAP
            entries = [(r.id, r.payload) for r in rows[-CAP:]]
            self.pending.append((token, entries, complete))

        @rule()
        def slow_fill_finishes(self) -> None:
            # ...and writes its (possibly stale) snapshot only now.
            if self.pending:
                token, entries, complete = self.pending.pop(0)
                memory.cache.fill(self.sid, token, entries, complete)

        @invariant()
        def cache_is_the_table_tail(self) -> None:
            assert_cache_is_tail(memory, redis_client, self.sid)

    run_state_machine_as_test(
        CacheProtocol,
        settings=settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
    proxy.close()
