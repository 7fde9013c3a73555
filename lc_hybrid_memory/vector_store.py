"""L3 storage: the recall tables next to the ``messages`` table. SQL only (SQLAlchemy Core).

Three small tables, all keyed by the message's row (conversation id + row id), never a second
copy of the text, so they also sit next to an application-owned table the library must not
alter:

- ``<messages>_recall_queue`` — pending work: the rows not yet indexed. A statement-level
  trigger on the messages table fills it inside the very INSERT that writes the messages (any
  code's INSERT, not only the library's), so pending work is durable and nothing is lost when
  an indexer dies; :meth:`RecallStore.backfill_stmt` enqueues rows that predate the trigger or
  lack a vector of the current embedder.
- ``<messages>_recall_text`` — the lexical side: one stored ``tsvector`` per message (text
  search configuration ``simple`` by default: no stemming, no stop words, fine for mixed
  languages). Needs no extension, so recall stays lexical on a server without pgvector.
- ``<messages>_recall_vectors`` — the semantic side (pgvector): one row per message and
  embedder (``model``), so the vectors of an old embedder stay until the new ones replace them.

Both index tables reference the message row with ``ON DELETE CASCADE`` when the mapped table
has a unique key to reference (the default schema's primary key does): a message deleted by any
code leaves no vector behind. Without one, :meth:`RecallStore.sweep_stmts` removes orphans.

Searches filter the conversation first (the primary key's leading column) and are exact within
it: never a global ANN index filtered afterwards, which returns fewer than k rows for a narrow
filter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    and_,
    bindparam,
    cast,
    column,
    delete,
    exists,
    func,
    literal,
    literal_column,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY, TSVECTOR
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Executable
from sqlalchemy.types import UserDefinedType

from .store import MessageStore

__all__ = ["Candidate", "PendingRow", "RecallStore", "Vector"]

_MIN_BIGINT = -(2**63)
# A text search configuration is spliced into SQL as a regconfig literal: a plain name only.
_CONFIG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


class Vector(UserDefinedType):
    """pgvector's ``vector`` column type (any dimension; values are bound as text and cast)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "vector"


@dataclass(frozen=True, slots=True)
class PendingRow:
    """A claimed row of the queue; ``payload``/``role``/``content`` are ``None`` if the message
    is gone."""

    conversation_id: Any
    message_id: int
    payload: str | None
    role: str | None
    content: str | None


@dataclass(frozen=True, slots=True)
class Candidate:
    """A message found by either side of a search, with its rank on each (1 = best)."""

    id: int
    payload: str | None
    role: str | None
    content: str | None
    message_uid: str | None
    created_at: datetime | None
    vector_rank: int | None
    lexical_rank: int | None


def vector_literal(vector: Sequence[float]) -> str:
    """pgvector's text form of a vector: ``[0.1,0.2,...]``."""
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


class RecallStore:
    """The recall tables of one mapped messages table, and the statements over them.

    Example::

        recall = RecallStore(store)            # store: a MessageStore
        with store.engine.connect() as conn:
            recall.create_schema(conn, vectors=True)
    """

    def __init__(self, store: MessageStore, *, text_search_config: str = "simple") -> None:
        self.store = store
        self.messages = store.table
        self.mapping = store.mapping
        if not _CONFIG_NAME.fullmatch(text_search_config):
            raise ValueError(f"not a text search configuration name: {text_search_config!r}")
        self.text_search_config = text_search_config
        base = self.mapping.name
        key_type = self.messages.c.conversation_id.type
        metadata = MetaData(schema=self.mapping.schema)
        self.queue = Table(
            f"{base}_recall_queue",
            metadata,
            Column("conversation_id", key_type, nullable=False),
            Column("message_id", BigInteger, nullable=False),
            Column(
                "enqueued_at", DateTime(timezone=True), nullable=False, server_default=func.now()
            ),
            PrimaryKeyConstraint("conversation_id", "message_id", name=f"{base}_recall_queue_pkey"),
        )
        self.lexemes = Table(
            f"{base}_recall_text",
            metadata,
            Column("conversation_id", key_type, nullable=False),
            Column("message_id", BigInteger, nullable=False),
            Column("tsv", TSVECTOR, nullable=False),
            PrimaryKeyConstraint("conversation_id", "message_id", name=f"{base}_recall_text_pkey"),
        )
        # A NULL embedding marks a message indexed with nothing to embed (no text, a tool call).
        self.vectors = Table(
            f"{base}_recall_vectors",
            metadata,
            Column("conversation_id", key_type, nullable=False),
            Column("message_id", BigInteger, nullable=False),
            Column("model", Text, nullable=False),
            Column("dimensions", Integer, nullable=True),
            Column("embedding", Vector(), nullable=True),
            PrimaryKeyConstraint(
                "conversation_id", "message_id", "model", name=f"{base}_recall_vectors_pkey"
            ),
        )
        self.trigger_name = f"{base}_recall_enqueue"

    # -- schema ------------------------------------------------------------------------------

    def _qualified(self, table: Table) -> str:
        preparer = self._preparer
        return preparer.format_table(table)

    @property
    def _preparer(self) -> Any:
        from sqlalchemy.dialects import postgresql

        return postgresql.dialect().identifier_preparer

    def _reference_columns(self, conn: Connection) -> list[str] | None:
        """Columns of the messages table a foreign key can reference (``None``: no unique key)."""
        from sqlalchemy import inspect

        inspector = inspect(conn)
        c = self.messages.c
        conv, row = c.conversation_id.name, c.id.name
        keys = [inspector.get_pk_constraint(self.mapping.name, schema=self.mapping.schema)]
        keys += inspector.get_unique_constraints(self.mapping.name, schema=self.mapping.schema)
        unique = [set(k.get("constrained_columns") or k.get("column_names") or []) for k in keys]
        unique += [
            set(i["column_names"])
            for i in inspector.get_indexes(self.mapping.name, schema=self.mapping.schema)
            if i.get("unique") and not i.get("expressions")
        ]
        if {conv, row} in unique:
            return [conv, row]
        if {row} in unique:
            return [row]
        return None

    def _ddl_table(self, table: Table, metadata: MetaData, references: list[str] | None) -> Table:
        copy = table.to_metadata(metadata)
        if references is not None:
            # Column keys of the mapped table (its own column names may differ).
            pair = len(references) == 2
            local = ["conversation_id", "message_id"] if pair else ["message_id"]
            target = self.messages.fullname
            remote = [f"{target}.{key}" for key in (["conversation_id", "id"] if pair else ["id"])]
            copy.append_constraint(
                ForeignKeyConstraint(
                    local, remote, ondelete="CASCADE", name=f"{table.name}_message_fkey"
                )
            )
        return copy

    def create_schema(self, conn: Connection, *, vectors: bool, trigger: bool = True) -> bool:
        """Create the recall tables (the vectors table only with ``vectors``), the enqueue
        trigger, and pgvector if possible; whether the vectors table exists afterwards.

        Runs on a connection in autocommit mode that already holds the schema lock.
        """
        if vectors:
            vectors = self.ensure_extension(conn)
        metadata = MetaData(schema=self.mapping.schema)
        tables = self.ddl_tables(
            metadata, vectors=vectors, references=self._reference_columns(conn)
        )
        metadata.create_all(conn, checkfirst=True, tables=tables)
        if trigger and not self.has_trigger(conn):
            # Only when missing: replacing it would lock the messages table on every start.
            for statement in self.trigger_ddl():
                conn.execute(text(statement))
        return vectors

    def ddl_tables(
        self, metadata: MetaData, *, vectors: bool, references: list[str] | None
    ) -> list[Table]:
        """The recall tables as created, with their foreign keys to the messages table
        (``references``: its unique columns, see :meth:`_reference_columns`), in ``metadata``
        (which gets a copy of the messages table if it lacks one)."""
        if self.messages.key not in metadata.tables:
            self.messages.to_metadata(metadata)
        tables = [self.queue, self.lexemes] + ([self.vectors] if vectors else [])
        return [
            self._ddl_table(table, metadata, None if table is self.queue else references)
            for table in tables
        ]

    def has_trigger(self, conn: Connection) -> bool:
        row = conn.execute(
            text("SELECT 1 FROM pg_trigger WHERE tgname = :name AND tgrelid = to_regclass(:rel)"),
            {"name": self.trigger_name, "rel": self._qualified(self.messages)},
        ).first()
        return row is not None

    def ensure_extension(self, conn: Connection) -> bool:
        """``CREATE EXTENSION IF NOT EXISTS vector``; ``False`` if the server cannot."""
        if self.has_extension(conn):
            return True
        available = conn.execute(
            text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
        ).first()
        if available is None:
            return False
        from sqlalchemy.exc import DBAPIError

        try:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        except DBAPIError:  # no privilege to create it
            return False
        return True

    @staticmethod
    def has_extension(conn: Connection) -> bool:
        return (
            conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")).first()
            is not None
        )

    def state_stmt(self) -> Executable:
        """Whether the vectors and the lexical tables exist (one row of two booleans)."""
        return select(
            func.to_regclass(literal(self._qualified(self.vectors))).isnot(None),
            func.to_regclass(literal(self._qualified(self.lexemes))).isnot(None),
        )

    def trigger_ddl(self) -> list[str]:
        """The statement-level AFTER INSERT trigger that enqueues every new message row."""
        q = self._preparer
        messages = self._qualified(self.messages)
        queue = self._qualified(self.queue)
        function = q.quote(self.trigger_name)
        if self.mapping.schema:
            function = f"{q.quote_schema(self.mapping.schema)}.{function}"
        conv = q.quote(self.messages.c.conversation_id.name)
        row = q.quote(self.messages.c.id.name)
        return [
            f"""CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {queue} (conversation_id, message_id)
    SELECT {conv}, {row} FROM new_rows
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$""",
            f"""CREATE OR REPLACE TRIGGER {q.quote(self.trigger_name)}
AFTER INSERT ON {messages} REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION {function}()""",
        ]

    # -- indexing ----------------------------------------------------------------------------

    def _message_columns(self) -> list[Any]:
        c = self.messages.c
        m = self.mapping
        return [
            cast(c.payload, Text).label("payload")
            if m.payload is not None
            else literal(None).label("payload"),
            c.role.label("role") if m.role is not None else literal(None).label("role"),
            c.content.label("content") if m.content is not None else literal(None).label("content"),
        ]

    def claim_stmt(self, limit: int) -> Executable:
        """Up to ``limit`` queued rows with their message, locked (others skip them)."""
        q, c = self.queue.c, self.messages.c
        return (
            select(q.conversation_id, q.message_id, *self._message_columns())
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
        return [PendingRow(r[0], r[1], r[2], r[3], r[4]) for r in result]

    def write_lexemes_stmt(self) -> Executable:
        """Upsert one message's ``tsvector`` (parameters: conversation_id, message_id, body)."""
        stmt = pg_insert(self.lexemes).values(
            conversation_id=bindparam("conversation_id"),
            message_id=bindparam("message_id"),
            tsv=func.to_tsvector(
                literal_column(f"'{self.text_search_config}'::regconfig"),
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

    def dequeue_stmt(self, keys: Sequence[tuple[Any, int]]) -> Executable:
        q = self.queue.c
        return delete(self.queue).where(tuple_(q.conversation_id, q.message_id).in_(list(keys)))

    def backfill_stmt(self, model: str | None, *, vectors: bool) -> Executable:
        """Enqueue every message lacking its index entry (a vector of ``model``, or lexemes)."""
        c = self.messages.c
        if vectors and model is not None:
            v = self.vectors.c
            missing = ~exists().where(
                and_(v.conversation_id == c.conversation_id, v.message_id == c.id, v.model == model)
            )
        else:
            t = self.lexemes.c
            missing = ~exists().where(
                and_(t.conversation_id == c.conversation_id, t.message_id == c.id)
            )
        rows = select(c.conversation_id, c.id).where(missing)
        stmt = pg_insert(self.queue).from_select(["conversation_id", "message_id"], rows)
        return stmt.on_conflict_do_nothing()

    def common_lexemes_stmt(self, share: float) -> Executable:
        """The lexemes in more than ``share`` of the messages, from Postgres's own statistics
        of the ``tsvector`` column (``ANALYZE``/autovacuum keep them; none before that)."""
        return text(
            "SELECT coalesce(array_agg(lexeme), '{}') FROM pg_stats, "
            "unnest(most_common_elems::text::text[], most_common_elem_freqs) AS e(lexeme, share) "
            "WHERE schemaname = :schema AND tablename = :table AND attname = 'tsv' "
            "AND lexeme IS NOT NULL AND share > :share"
        ).bindparams(schema=self.mapping.schema or "public", table=self.lexemes.name, share=share)

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

    # -- search ------------------------------------------------------------------------------

    def _cutoff(self, key: Any, exclude_recent: int) -> Any:
        """Row id from which messages are excluded: the ``exclude_recent``-th newest one."""
        c = self.messages.c
        if exclude_recent <= 0:
            return None
        newest = (
            select(c.id)
            .where(and_(c.conversation_id >= key, c.conversation_id <= key))
            .order_by(c.conversation_id.desc(), c.id.desc())
            .offset(exclude_recent - 1)
            .limit(1)
            .scalar_subquery()
        )
        # Fewer messages than exclude_recent: every one of them is recent.
        return func.coalesce(newest, _MIN_BIGINT)

    def search_stmt(
        self,
        key: Any,
        *,
        query: str,
        embedding: Sequence[float] | None,
        model: str | None,
        candidates: int,
        exclude_recent: int,
        lexical: bool = True,
        common: Sequence[str] = (),
    ) -> Executable:
        """One statement: the best ``candidates`` of each side, joined to their messages."""
        c = self.messages.c
        cutoff = self._cutoff(key, exclude_recent)
        sides = []
        if embedding is not None and model is not None:
            v = self.vectors.c
            # Unit-length vectors: inner product orders like cosine and costs less.
            distance = v.embedding.op("<#>", return_type=Float())(
                cast(literal(vector_literal(embedding), Text), Vector())
            )
            vec = (
                select(
                    v.message_id.label("message_id"),
                    func.row_number().over(order_by=distance).label("vector_rank"),
                )
                .where(v.conversation_id == key, v.model == model, v.embedding.isnot(None))
                .order_by(distance)
                .limit(candidates)
            )
            if cutoff is not None:
                vec = vec.where(v.message_id < cutoff)
            sides.append(vec.cte("vector_side"))
        if lexical:
            t = self.lexemes.c
            tsquery = _any_word_tsquery(self.text_search_config, query, common)
            rank = func.ts_rank_cd(t.tsv, tsquery, 1)
            lex = (
                select(
                    t.message_id.label("message_id"),
                    func.row_number()
                    .over(order_by=(rank.desc(), t.message_id.desc()))
                    .label("lexical_rank"),
                )
                .where(t.conversation_id == key, t.tsv.op("@@")(tsquery))
                .order_by(rank.desc(), t.message_id.desc())
                .limit(candidates)
            )
            if cutoff is not None:
                lex = lex.where(t.message_id < cutoff)
            sides.append(lex.cte("lexical_side"))
        if not sides:
            raise ValueError("a search needs the vector side, the lexical side, or both")
        if len(sides) == 2:
            vec_cte, lex_cte = sides
            ids = select(
                func.coalesce(vec_cte.c.message_id, lex_cte.c.message_id).label("message_id"),
                vec_cte.c.vector_rank,
                lex_cte.c.lexical_rank,
            ).select_from(
                vec_cte.outerjoin(lex_cte, vec_cte.c.message_id == lex_cte.c.message_id, full=True)
            )
        else:
            side = sides[0]
            ids = select(
                side.c.message_id,
                side.c.vector_rank
                if "vector_rank" in side.c
                else literal(None).label("vector_rank"),
                side.c.lexical_rank
                if "lexical_rank" in side.c
                else literal(None).label("lexical_rank"),
            )
        found = ids.subquery("found")
        m = self.mapping
        return select(
            c.id,
            *self._message_columns(),
            c.message_uid if m.message_uid is not None else literal(None),
            c.created_at if m.created_at is not None else literal(None),
            found.c.vector_rank,
            found.c.lexical_rank,
        ).select_from(
            found.join(self.messages, and_(c.conversation_id == key, c.id == found.c.message_id))
        )

    @staticmethod
    def candidates(result: Any) -> list[Candidate]:
        return [Candidate(*row) for row in result]


def _any_word_tsquery(config: str, query: str, common: Sequence[str]) -> Any:
    """A ``tsquery`` matching any word of ``query`` except the ``common`` lexemes (words in a
    large share of the messages carry no information and drown the rare ones; with
    ``plainto_tsquery`` every word would be required). NULL, matching nothing, if none is left.

    The parser never puts quotes or backslashes in a lexeme, so ``quote_literal`` gives the
    tsquery spelling of each.
    """
    return (
        text(
            "SELECT string_agg(quote_literal(lexeme), ' | ')::tsquery "
            f"FROM unnest(tsvector_to_array(to_tsvector('{config}'::regconfig, :query))) "
            "AS lexeme WHERE lexeme <> ALL(:common)"
        )
        .bindparams(
            bindparam("query", query, type_=Text),
            bindparam("common", list(common), type_=ARRAY(Text)),
        )
        .columns(column("tsquery", _TSQUERY))
        .scalar_subquery()
    )


class _TSQueryType(UserDefinedType):
    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "tsquery"


_TSQUERY = _TSQueryType()
