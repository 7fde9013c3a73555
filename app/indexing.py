"""The app's semantic-recall indexer: the background thread of the worker (and of ``serve`` in
inline mode), and ``hybrid-memory index [--backfill] [--reembed]`` with a progress bar.

New messages are queued for indexing by the INSERT that stores them; the indexer embeds the
queue in batches, off the turn's path. Nothing here when recall is off (``RECALL=false``, or the
``[recall]`` extra not installed).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

import click

from lc_hybrid_memory import HybridMemory, RecallIndexer

logger = logging.getLogger(__name__)

# How often an idle indexer looks at the queue (a message is searchable about this long after
# it was stored, plus its batch's embedding time).
INDEX_INTERVAL_SECONDS = 1.0
# Messages per progress step of `hybrid-memory index`.
PROGRESS_STEP = 256


def start_indexer(memory: HybridMemory) -> RecallIndexer | None:
    """Start the background indexer of this process, or ``None`` when recall is off."""
    if memory.recall_index is None:
        return None
    indexer = memory.start_indexer(interval=INDEX_INTERVAL_SECONDS)
    logger.debug("recall indexer started")
    return indexer


def index_command(
    memory: HybridMemory, *, backfill: bool, reembed: bool, out: IO[str] | None = None
) -> int:
    """``hybrid-memory index``: index what is queued (first queueing the messages that lack an
    entry with ``--backfill``, or every message with ``--reembed``), with a progress bar (rows/s
    and ETA; on a terminal) and a summary line."""
    out = out or sys.stderr
    recall = memory.recall_index
    if recall is None:
        print(
            "error: recall is off (RECALL=false, or the [recall] extra is not installed: "
            "pip install 'lc-hybrid-memory[recall]')",
            file=out,
        )
        return 2
    if backfill or reembed:
        queued = recall.backfill(everything=reembed)
        print(f"queued {queued} messages for indexing", file=out)
    total = int(recall.lag()["pending"])
    if total == 0:
        print("nothing to index", file=out)
        return 0
    started = time.monotonic()
    done = indexed = 0

    def rate(current: int | None) -> str:
        elapsed = time.monotonic() - started
        return f"{(current or 0) / elapsed:.0f} rows/s" if elapsed > 0 and current else ""

    with click.progressbar(
        length=total, label="indexing", file=out, show_eta=True, item_show_func=rate
    ) as bar:
        while done < total:
            wanted = min(PROGRESS_STEP, total - done)
            before = int(recall.lag()["pending"])
            indexed += recall.index_pending(limit=wanted)
            step = min(wanted, max(0, before - int(recall.lag()["pending"])))
            if step == 0:  # the queue ran dry (another indexer took the rest)
                break
            done += step
            bar.update(step, done)
    seconds = time.monotonic() - started
    speed = f"{done / seconds:.0f} rows/s" if seconds > 0 else "-"
    print(f"indexed {indexed} messages ({done} rows) in {seconds:.1f} s, {speed}", file=out)
    return 0


def recall_lag(memory: HybridMemory) -> dict[str, Any] | None:
    """The indexing lag (pending rows, age of the oldest) for /readyz, or ``None`` when off."""
    if memory.recall_index is None:
        return None
    stats = memory.stats()
    return {
        "pending": stats.get("recall_pending"),
        "oldest_pending_seconds": stats.get("recall_oldest_pending_seconds"),
    }
