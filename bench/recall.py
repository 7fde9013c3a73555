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
import os
import statistics
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from langchain_core.messages import AIMessage, HumanMessage

from lc_hybrid_memory import HybridMemory, MessageRecall, MessageTable, sync_url

from . import recall_dataset as rd
from .recall_langgraph import store_quality
from .recall_latency import drop, latency, write_path
from .servers import servers


def _messages(texts: list[str]) -> list[Any]:
    return [(HumanMessage if i % 2 == 0 else AIMessage)(t) for i, t in enumerate(texts)]


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


def quality(
    url: str, embeddings: Any, conversations: int, length: int, *, langgraph: bool
) -> dict[str, Any]:
    engine = sa.create_engine(sync_url(url), isolation_level="AUTOCOMMIT")
    name = "bench_recall_quality"
    drop(engine, name)
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
        "hybrid: stop words only (words in ≤ 2 % kept), RRF 1:1": variant(common_share=0.02),
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
    q = next(q for q in questions if q.kind == "paraphrase")
    times = []
    for _ in range(50):  # with the query's embedding, as the store's search below
        started = time.perf_counter()
        base.recall(q.conversation, q.text, k=10, exclude_recent=50)
        times.append(time.perf_counter() - started)
    search_ms = statistics.median(times) * 1e3
    memory.close()
    drop(engine, name)
    engine.dispose()
    store = None
    if langgraph:
        store = store_quality(url, embeddings, convs, questions, _score)
        rows["LangGraph PostgresStore(index=…), same embedder"] = store.pop("cells")
    return {
        "store": store,
        "search_ms_p50_with_embedding": search_ms,
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
    lines += ["", f"Indexing: {q['indexing_msgs_per_s']:.0f} messages/s (embedding + writes)."]
    lines.append(
        f"Search with the query's embedding, {q['length']}-message conversations: recall "
        f"{q['search_ms_p50_with_embedding']:.1f} ms p50."
    )
    store = q.get("store")
    if store:
        lines[-1] += (
            f" LangGraph's store: {store['search_ms_p50_with_embedding']:.1f} ms p50; it "
            f"indexed {store['indexing_msgs_per_s']:.0f} messages/s (embedding on put); "
            f"{store['short_answers']} questions got fewer than 10 results."
        )
    lat = results.get("latency")
    if lat:
        lines += [
            "",
            f"Latency (database side, query embedding excluded: "
            f"{lat['query_embedding_ms_p50']:.1f} ms p50), table of {lat['table_rows']:,} rows, "
            f"load average {lat['load_average']:.1f} on {os.cpu_count()} cores:",
            "",
            "| messages in the conversation | paraphrase p50 | p99 | min | exact token p50 | p99 "
            "| min |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, cell in lat.items():
            if key.isdigit():
                p, e = cell["paraphrase"], cell["exact"]
                lines.append(
                    f"| {int(key):,} | {p['p50_ms']:.1f} ms | {p['p99_ms']:.1f} ms | "
                    f"{p['min_ms']:.1f} ms | {e['p50_ms']:.1f} ms | {e['p99_ms']:.1f} ms | "
                    f"{e['min_ms']:.1f} ms |"
                )
        hnsw = lat.get("hnsw")
        if hnsw and "error" in hnsw:
            lines += ["", f"HNSW: {hnsw['error']}"]
        elif hnsw:
            lines += [
                "",
                f"HNSW over the longest conversation only (built in {hnsw['build_s']:.1f} s):",
            ]
            for key, cell in hnsw.items():
                if key.startswith("ef_search"):
                    lines.append(
                        f"- {key}: {cell['p50_ms']:.2f} ms p50, recall@10 {cell['recall@10']:.2f}"
                    )
    w = results.get("write")
    if w:
        lines += [
            "",
            f"Write path (one turn, add_messages): recall off {w['off_ms_p50']:.2f} ms, on "
            f"{w['on_ms_p50']:.2f} ms p50 — ratio **{w['ratio']:.3f}×** (median of paired runs).",
        ]
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
    p.add_argument(
        "--no-langgraph",
        action="store_true",
        help="skip LangGraph's PostgresStore (the bench extra: langgraph-checkpoint-postgres)",
    )
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
            "quality": quality(
                srv.database_url,
                embeddings,
                args.conversations,
                args.length,
                langgraph=not args.no_langgraph,
            ),
            "write": write_path(srv.database_url, embeddings, 40 if args.smoke else 3000),
            "latency": latency(
                srv.database_url,
                embeddings,
                args.rows,
                lengths,
                args.repeats,
                hnsw=not args.smoke,
            ),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recall.json").write_text(json.dumps(results, indent=2))
    (args.out / "recall.md").write_text(table(results))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
