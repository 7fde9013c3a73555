"""``python -m bench.recall`` — the semantic recall (L3) benchmark. See docs/recall.md.

Quality: recall@1, recall@5 and MRR of substring (``search()``, the old tool), lexical
(full-text), vector and hybrid recall on synthetic conversations with planted facts; leaks
across conversations. Speed: recall latency at 300 and 10 000 messages in the conversation with
``--rows`` rows in the table (filler rows get random unit vectors: only their number matters),
indexing throughput, and the write path with recall on vs off (ratio of medians, interleaved).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from langchain_core.messages import AIMessage, HumanMessage

from lc_hybrid_memory import HybridMemory, MessageRecall, MessageTable
from lc_hybrid_memory.store import sync_url

from . import recall_dataset as rd
from .servers import servers


def _messages(texts: list[str]) -> list[Any]:
    return [(HumanMessage if i % 2 == 0 else AIMessage)(t) for i, t in enumerate(texts)]


def _drop(engine: sa.Engine, name: str) -> None:
    with engine.connect() as conn:
        for part in ("recall_vectors", "recall_text", "recall_queue"):
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}_{part}"'))
        conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}" CASCADE'))
        conn.execute(sa.text(f'DROP FUNCTION IF EXISTS "{name}_recall_enqueue"()'))


def _score(ranked: list[list[str]], answers: list[str]) -> dict[str, float]:
    r1 = r5 = rr = 0.0
    for texts, answer in zip(ranked, answers, strict=True):
        if answer in texts[:1]:
            r1 += 1
        if answer in texts[:5]:
            r5 += 1
        if answer in texts[:10]:
            rr += 1 / (texts.index(answer) + 1)
    n = len(answers) or 1
    return {"recall@1": r1 / n, "recall@5": r5 / n, "mrr": rr / n}


def quality(url: str, embeddings: Any, conversations: int, length: int) -> dict[str, Any]:
    engine = sa.create_engine(sync_url(url), isolation_level="AUTOCOMMIT")
    name = "bench_recall_quality"
    _drop(engine, name)
    memory = HybridMemory.from_urls(
        redis_url=None, database_url=url, table=MessageTable(name=name), embeddings=embeddings
    )
    memory.create_schema()
    convs, questions = rd.build(conversations, length)
    for conv in convs:
        memory.add_messages(conv.id, _messages(conv.messages))
    started = time.perf_counter()
    indexed = memory.index_pending()
    index_seconds = time.perf_counter() - started
    with engine.connect() as conn:  # the lexeme statistics autovacuum would gather
        conn.execute(sa.text(f'ANALYZE "{name}_recall_text"'))
    own_ids: dict[str, set[int]] = {
        conv.id: {row.id for row in memory.store.all(conv.id)} for conv in convs
    }
    base = memory.recall_index
    assert base is not None

    def variant(**options: Any) -> MessageRecall:
        return MessageRecall(memory.store, embeddings, **options)

    variants: dict[str, MessageRecall] = {
        "lexical (full-text, specific words)": MessageRecall(memory.store, None),
        "vector": variant(lexical_weight=0.0),
        "**hybrid (default): specific words, RRF 1:1**": base,
        "hybrid: specific words, RRF 1:0.2": variant(lexical_weight=0.2),
        "hybrid: stop words kept, RRF 1:1": variant(stopwords=()),
        "hybrid: words in ≤ 2 % of messages, RRF 1:0.2 (before)": variant(
            common_share=0.02, stopwords=(), lexical_weight=0.2
        ),
        "hybrid: all words, RRF 1:1": variant(common_share=1.0, stopwords=()),
    }
    rows: dict[str, dict[str, Any]] = {}
    for kind in ("paraphrase", "exact"):
        qs = [q for q in questions if q.kind == kind]
        answers = [q.answer for q in qs]
        found = [[m.content for m in memory.search(q.conversation, q.text, limit=10)] for q in qs]
        rows.setdefault("substring (search)", {})[kind] = _score(found, answers)
        for label, recall in variants.items():
            leaks = 0
            ranked = []
            for q in qs:
                hits = recall.recall(q.conversation, q.text, k=10, exclude_recent=50)
                leaks += sum(1 for h in hits if h.id not in own_ids[q.conversation])
                ranked.append([codec_text(h.message) for h in hits])
            cell = _score(ranked, answers)
            cell["leaks"] = leaks
            rows.setdefault(label, {})[kind] = cell
    memory.close()
    _drop(engine, name)
    engine.dispose()
    return {
        "conversations": conversations,
        "length": length,
        "questions": {k: sum(1 for q in questions if q.kind == k) for k in ("paraphrase", "exact")},
        "methods": rows,
        "indexing_msgs_per_s": indexed / index_seconds if index_seconds else None,
        "indexed": indexed,
    }


def codec_text(message: Any) -> str:
    from lc_hybrid_memory import codec

    return codec.plain_text(message)


def latency(
    url: str, embeddings: Any, rows: int, lengths: list[int], repeats: int
) -> dict[str, Any]:
    """Recall p50/p99 (query embedding excluded) for conversations of ``lengths`` in a table of
    ``rows`` rows; filler conversations of 1 000 messages with random unit vectors."""
    engine = sa.create_engine(sync_url(url), isolation_level="AUTOCOMMIT")
    name = "bench_recall_latency"
    _drop(engine, name)
    memory = HybridMemory.from_urls(
        redis_url=None, database_url=url, table=MessageTable(name=name), embeddings=embeddings
    )
    memory.create_schema()
    recall = memory.recall_index
    assert recall is not None
    model = recall.model_name
    total = max(rows, sum(lengths))
    with engine.connect() as conn:
        # Targets first (their own conversations), then fillers up to ``total`` rows.
        for length in lengths:
            _fill(conn, name, f"target-{length}", length, model, conversations=1)
        rest = total - sum(lengths)
        if rest > 0:
            _fill(conn, name, "filler", 1000, model, conversations=max(1, rest // 1000))
        conn.execute(sa.text(f'TRUNCATE "{name}_recall_queue"'))
        conn.execute(sa.text(f'VACUUM ANALYZE "{name}"'))
        conn.execute(sa.text(f'VACUUM ANALYZE "{name}_recall_vectors"'))
        conn.execute(sa.text(f'VACUUM ANALYZE "{name}_recall_text"'))
        table_rows = conn.execute(sa.text(f'SELECT count(*) FROM "{name}"')).scalar_one()
    query = "which town does my sibling live in now?"
    vector = embeddings.embed_query(query)
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        embeddings.embed_query(query)
        timings.append(time.perf_counter() - started)
    result: dict[str, Any] = {
        "table_rows": table_rows,
        "query_embedding_ms_p50": statistics.median(timings) * 1e3,
    }

    class Fixed:
        def embed_query(self, text: str) -> list[float]:
            return vector

    fixed = MessageRecall(memory.store, embeddings, model_name=model)
    fixed.embeddings = Fixed()  # type: ignore[assignment]  # time the database side only
    for length in lengths:
        sid = f"target-{length}-0"
        fixed.recall(sid, query, k=5, exclude_recent=50)  # warm
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fixed.recall(sid, query, k=5, exclude_recent=50)
            times.append(time.perf_counter() - started)
        times.sort()
        result[str(length)] = {
            "p50_ms": times[len(times) // 2] * 1e3,
            "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3,
        }
    memory.close()
    _drop(engine, name)
    engine.dispose()
    return result


def _fill(
    conn: Any, name: str, prefix: str, length: int, model: str, *, conversations: int
) -> None:
    """``conversations`` conversations of ``length`` rows, with lexemes and random vectors."""
    conn.execute(
        sa.text(
            f'INSERT INTO "{name}" (conversation_id, role, content, payload, message_uid) '
            "SELECT :prefix || '-' || (g / :length), 'user', 'filler ' || g, "
            """jsonb_build_object('type', 'human', 'data', jsonb_build_object('content', """
            "'filler message number ' || g || ' about ' || (g % 97))), 'u' || g "
            "FROM generate_series(0, :n - 1) g"
        ),
        {"prefix": prefix, "length": length, "n": length * conversations},
    )
    conn.execute(
        sa.text(
            f'INSERT INTO "{name}_recall_text" (conversation_id, message_id, tsv) '
            f"SELECT m.conversation_id, m.id, to_tsvector('simple', m.payload->'data'->>'content') "
            f'FROM "{name}" m JOIN "{name}_recall_queue" q '
            "ON q.conversation_id = m.conversation_id AND q.message_id = m.id"
        )
    )
    conn.execute(
        sa.text(
            f'INSERT INTO "{name}_recall_vectors" '
            "(conversation_id, message_id, model, dimensions, embedding) "
            "SELECT q.conversation_id, q.message_id, :model, 384, "
            "(SELECT array_agg(random() - 0.5) FROM generate_series(1, 384) "
            "WHERE q.message_id IS NOT NULL)::vector "
            f'FROM "{name}_recall_queue" q'
        ),
        {"model": model},
    )
    conn.execute(sa.text(f'TRUNCATE "{name}_recall_queue"'))


def write_path(url: str, embeddings: Any, rounds: int) -> dict[str, Any]:
    """One turn (two messages) through add_messages, recall on vs off, interleaved."""
    engine = sa.create_engine(sync_url(url), isolation_level="AUTOCOMMIT")
    memories = {}
    for label, emb in (("off", None), ("on", embeddings)):
        name = f"bench_recall_write_{label}"
        _drop(engine, name)
        memory = HybridMemory.from_urls(
            redis_url=None, database_url=url, table=MessageTable(name=name), embeddings=emb
        )
        memory.create_schema()
        memories[label] = memory
    times: dict[str, list[float]] = {"off": [], "on": []}
    for i in range(rounds):
        for label in ("off", "on") if i % 2 == 0 else ("on", "off"):
            turn = [HumanMessage(f"question {i}"), AIMessage(f"answer {i}")]
            started = time.perf_counter()
            memories[label].add_messages(f"w-{i % 20}", turn)
            times[label].append(time.perf_counter() - started)
    for label, memory in memories.items():
        memory.close()
        _drop(engine, f"bench_recall_write_{label}")
    engine.dispose()
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    return {"off_ms_p50": off * 1e3, "on_ms_p50": on * 1e3, "ratio": on / off}


def table(results: dict[str, Any]) -> str:
    q = results["quality"]
    lines = [
        f"Quality: {q['conversations']} conversations × {q['length']} messages, "
        f"{q['questions']['paraphrase']} paraphrase and {q['questions']['exact']} exact-token "
        "questions, facts older than the last 50 messages (`exclude_recent=50`).",
        "",
        "| method | paraphrase R@1 | R@5 | MRR | exact-token R@1 | R@5 | MRR | leaks |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, cells in q["methods"].items():
        p, e = cells["paraphrase"], cells["exact"]
        leaks = p.get("leaks", 0) + e.get("leaks", 0) if "leaks" in p else "–"
        lines.append(
            f"| {label} | {p['recall@1']:.2f} | {p['recall@5']:.2f} | {p['mrr']:.2f} | "
            f"{e['recall@1']:.2f} | {e['recall@5']:.2f} | {e['mrr']:.2f} | {leaks} |"
        )
    lat = results.get("latency")
    if lat:
        lines += [
            "",
            f"Latency (database side, query embedding excluded: "
            f"{lat['query_embedding_ms_p50']:.1f} ms p50), table of {lat['table_rows']:,} rows:",
            "",
            "| messages in the conversation | recall p50 | p99 |",
            "|---|---|---|",
        ]
        for key, cell in lat.items():
            if isinstance(cell, dict):
                lines.append(
                    f"| {int(key):,} | {cell['p50_ms']:.1f} ms | {cell['p99_ms']:.1f} ms |"
                )
    w = results.get("write")
    if w:
        lines += [
            "",
            f"Write path (one turn, add_messages): recall off {w['off_ms_p50']:.2f} ms, on "
            f"{w['on_ms_p50']:.2f} ms p50 — ratio **{w['ratio']:.3f}×**.",
        ]
    if q.get("indexing_msgs_per_s"):
        lines += ["", f"Indexing throughput: {q['indexing_msgs_per_s']:.0f} messages/s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.recall", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("bench/results/recall"))
    p.add_argument("--conversations", type=int, default=12)
    p.add_argument("--length", type=int, default=300)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--lengths", default="300,10000")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--smoke", action="store_true", help="seconds-long run (tests)")
    args = p.parse_args(argv)
    if args.smoke:
        args.conversations, args.length, args.rows, args.lengths, args.repeats = (
            2, 120, 2000, "300,1000", 5,
        )  # fmt: skip
    from lc_hybrid_memory.embeddings import default_embeddings

    embeddings = default_embeddings().load()
    lengths = [int(x) for x in args.lengths.split(",")]
    with servers(args.out) as srv:
        results = {
            "quality": quality(srv.database_url, embeddings, args.conversations, args.length),
            "write": write_path(srv.database_url, embeddings, 40 if args.smoke else 600),
            "latency": latency(srv.database_url, embeddings, args.rows, lengths, args.repeats),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recall.json").write_text(json.dumps(results, indent=2))
    (args.out / "recall.md").write_text(table(results))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
