"""The recall tables' statements for indexing and upkeep: claim the queue, write lexemes and
vectors, dequeue, backfill, lag, erase, sweep. SQL only (SQLAlchemy Core), no I/O.

Every statement is built over a :class:`~lc_hybrid_memory.recall_schema.RecallTables`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Text,
    and_,
    bindparam,
    cast,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql import Executable

from .recall_schema import RecallTables, Vector

__all__ = ["BACKFILL_LOCK_KEY", "PendingRow", "RecallStatements"]

# pg_advisory_xact_lock key serialising backfills.
BACKFILL_LOCK_KEY = 0x6C6368_626B66  # "lchbkf"


@dataclass(frozen=True, slots=True)
class PendingRow:
    """A claimed message of the queue (``ctids``: where its queue rows are, to delete them);
    ``payload``/``role``/``content`` are ``None`` if the message is gone."""

    ctids: tuple[str, ...]
    conversation_id: Any
    message_id: int
    payload: str | None
    role: str | None
    content: str | None


class RecallStatements:
    """Indexing and upkeep statements of one set of recall tables.

    Example::

        sql = RecallStatements(RecallTables(store))
        rows = sql.pending_rows(conn.execute(sql.claim_stmt(64)))
    """

    def __init__(self, tables: RecallTables) -> None:
        self.t = tables
        self.queue, self.lexemes, self.vectors = tables.queue, tables.lexemes, tables.vectors
        self.messages, self.mapping = tables.messages, tables.mapping

    def claim_stmt(self, limit: int) -> Executable:
        """Up to ``limit`` queued rows with their message, locked (others skip them)."""
        q, c = self.queue.c, self.messages.c
        ctid = cast(literal_column(f"{self.t.qualified(self.queue)}.ctid"), Text)
        return (
            select(ctid, q.conversation_id, q.message_id, *self.t.message_columns())
            .select_from(
                self.queue.outerjoin(
                    self.messages,
                    and_(c.conversation_id == q.conversation_id, c.id == q.message_id),
                )
            )
            .limit(limit)
            .with_for_update(of=self.queue, skip_locked=True)
        )

    @staticmethod
    def pending_rows(result: Any) -> list[PendingRow]:
        """One per message, with the queue rows naming it (a message queued twice, by a
        backfill and a re-embedding, is indexed once)."""
        rows: dict[tuple[Any, int], PendingRow] = {}
        for ctid, *rest in result:
            key = (rest[0], rest[1])
            seen = rows.get(key)
            ctids = (*seen.ctids, ctid) if seen is not None else (ctid,)
            rows[key] = PendingRow(ctids, *rest)
        return list(rows.values())

    def write_lexemes_stmt(self) -> Executable:
        """Upsert one message's ``tsvector`` (parameters: conversation_id, message_id, body)."""
        stmt = pg_insert(self.lexemes).values(
            conversation_id=bindparam("conversation_id"),
            message_id=bindparam("message_id"),
            tsv=func.to_tsvector(
                literal_column(f"'{self.t.text_search_config}'::regconfig"),
                bindparam("body", type_=Text),
            ),
        )
        return stmt.on_conflict_do_update(
            index_elements=["conversation_id", "message_id"], set_={"tsv": stmt.excluded.tsv}
        )

    def write_vectors_stmt(self) -> Executable:
        """Upsert one message's vector (parameters: conversation_id, message_id, model,
        dimensions, embedding as text or ``None``)."""
        stmt = pg_insert(self.vectors).values(
            conversation_id=bindparam("conversation_id"),
            message_id=bindparam("message_id"),
            model=bindparam("model"),
            dimensions=bindparam("dimensions"),
            embedding=cast(bindparam("embedding", type_=Text), Vector()),
        )
        return stmt.on_conflict_do_update(
            index_elements=["conversation_id", "message_id", "model"],
            set_={"embedding": stmt.excluded.embedding, "dimensions": stmt.excluded.dimensions},
        )

    def drop_other_models_stmt(self, keys: Sequence[tuple[Any, int]], model: str) -> Executable:
        """Delete the vectors of other embedders for rows that now have one of ``model``."""
        v = self.vectors.c
        return (
            delete(self.vectors)
            .where(tuple_(v.conversation_id, v.message_id).in_(list(keys)))
            .where(v.model != model)
        )

    def dequeue_stmt(self, ctids: Sequence[str]) -> Executable:
        """Delete claimed queue rows by where they are (the queue has no index)."""
        return text(
            f"DELETE FROM {self.t.qualified(self.queue)} WHERE ctid = ANY(CAST(:ctids AS tid[]))"
        ).bindparams(bindparam("ctids", list(ctids), type_=ARRAY(Text)))

    def backfill_lock_stmt(self) -> Executable:
        """Serialise backfills (each then sees what the previous one queued)."""
        return select(func.pg_advisory_xact_lock(BACKFILL_LOCK_KEY))

    def backfill_stmt(
        self, model: str | None, *, vectors: bool, everything: bool = False
    ) -> Executable:
        """Enqueue every message lacking its index entry (a vector of ``model``, or lexemes),
        or with ``everything`` every message (not already queued)."""
        c = self.messages.c
        if everything:
            missing = literal(True)
        elif vectors and model is not None:
            v = self.vectors.c
            missing = ~exists().where(
                and_(v.conversation_id == c.conversation_id, v.message_id == c.id, v.model == model)
            )
        else:
            t = self.lexemes.c
            missing = ~exists().where(
                and_(t.conversation_id == c.conversation_id, t.message_id == c.id)
            )
        q = self.queue.c
        queued = exists().where(and_(q.conversation_id == c.conversation_id, q.message_id == c.id))
        rows = select(c.conversation_id, c.id).where(missing, ~queued)
        return insert(self.queue).from_select(["conversation_id", "message_id"], rows)

    def common_lexemes_stmt(self, share: float, min_messages: int) -> Executable:
        """Whether the ``tsvector`` column has statistics, and the lexemes found in more than
        ``share`` of the messages and in more than ``min_messages`` of them according to those
        (Postgres's own, kept by ANALYZE and autovacuum; one row)."""
        return text(
            "SELECT count(*) > 0, coalesce(array_agg(e.lexeme) FILTER "
            "(WHERE e.lexeme IS NOT NULL AND e.share > :share "
            "AND e.share * greatest(c.reltuples, 0) > :min_messages), '{}') "
            "FROM pg_stats s JOIN pg_class c ON c.oid = to_regclass(:qualified) "
            "LEFT JOIN LATERAL unnest(s.most_common_elems::text::text[], "
            "s.most_common_elem_freqs) AS e(lexeme, share) ON true "
            "WHERE s.schemaname = :schema AND s.tablename = :table AND s.attname = 'tsv'"
        ).bindparams(
            schema=self.mapping.schema or "public",
            table=self.lexemes.name,
            qualified=self.t.qualified(self.lexemes),
            share=share,
            min_messages=min_messages,
        )

    def analyze_stmt(self) -> Executable:
        """Gather the statistics of the lexemes table now (autovacuum would, later)."""
        return text(f"ANALYZE {self.t.qualified(self.lexemes)}")

    def lag_stmt(self) -> Executable:
        """Pending rows and the age in seconds of the oldest (one row)."""
        q = self.queue.c
        return select(
            func.count(),
            func.coalesce(func.extract("epoch", func.now() - func.min(q.enqueued_at)), 0.0),
        ).select_from(self.queue)

    def forget_stmts(self, conversation_key: Any, *, vectors: bool) -> list[Executable]:
        """Delete a conversation's index entries and pending work (after its messages)."""
        tables = [self.queue, self.lexemes] + ([self.vectors] if vectors else [])
        return [delete(t).where(t.c.conversation_id == conversation_key) for t in tables]

    def sweep_stmts(self, *, vectors: bool) -> list[Executable]:
        """Delete index entries whose message row is gone (for tables without a foreign key)."""
        c = self.messages.c
        stmts = []
        for table in [self.lexemes] + ([self.vectors] if vectors else []):
            t = table.c
            gone = ~exists().where(
                and_(c.conversation_id == t.conversation_id, c.id == t.message_id)
            )
            stmts.append(delete(table).where(gone))
        return stmts
