"""L3 storage: the recall tables next to the ``messages`` table and their DDL. SQL only.

Three small tables, all keyed by the message's row (conversation id + row id), never a second
copy of the text, so they also sit next to an application-owned table the library must not
alter:

- ``<messages>_recall_queue`` — pending work: the rows not yet indexed. A statement-level
  trigger on the messages table fills it inside the very INSERT that writes the messages (any
  code's INSERT, not only the library's), so pending work is durable and nothing is lost when
  an indexer dies; a backfill (:mod:`.recall_statements`) enqueues rows that predate the
  trigger or lack a vector of the current embedder. The queue has no index: a key would cost
  every write a B-tree insertion (a third of what recall adds to a turn); the indexer takes and
  deletes its rows by ``ctid``.
- ``<messages>_recall_text`` — the lexical side: one stored ``tsvector`` per message (text
  search configuration ``simple`` by default: no stemming, no stop words, fine for mixed
  languages) and a GIN index over them. Needs no extension, so recall stays lexical on a server
  without pgvector. :meth:`RecallTables.lexical_function_ddl` is the lexical search.
- ``<messages>_recall_vectors`` — the semantic side (pgvector): one row per message and
  embedder (``model``), so the vectors of an old embedder stay until the new ones replace them.

Both index tables reference the message row with ``ON DELETE CASCADE`` when the mapped table
has a unique key to reference (the default schema's primary key does): a message deleted by any
code leaves no vector behind. Without one, a sweep (:mod:`.recall_statements`) removes orphans.

The statements over these tables live in :mod:`.recall_statements` (indexing, upkeep) and
:mod:`.recall_search_sql` (the search).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    cast,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateIndex
from sqlalchemy.sql import Executable
from sqlalchemy.types import UserDefinedType

from .store import MessageStore

__all__ = ["RecallTables", "Vector", "vector_literal"]

# A text search configuration is spliced into SQL as a regconfig literal: a plain name only.
_CONFIG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
# Statistics target of the lexemes: 5 000 most common elements tracked, so the share of each
# word in the messages (which words the lexical side skips) is known well past the 0.1 % mark.
LEXEME_STATISTICS = 500


class Vector(UserDefinedType):
    """pgvector's ``vector`` column type (any dimension; values are bound as text and cast)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "vector"


def vector_literal(vector: Sequence[float]) -> str:
    """pgvector's text form of a vector: ``[0.1,0.2,...]``; 9 significant digits, as many as
    its 4-byte floats hold (shorter to send and parse than Python's 17)."""
    return "[" + ",".join(map("{:.9g}".format, vector)) + "]"


class RecallTables:
    """The recall tables of one mapped messages table, and their DDL.

    Example::

        tables = RecallTables(store)            # store: a MessageStore
        with store.engine.connect() as conn:
            tables.create_schema(conn, vectors=True)
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
        )
        self.lexemes = Table(
            f"{base}_recall_text",
            metadata,
            Column("conversation_id", key_type, nullable=False),
            Column("message_id", BigInteger, nullable=False),
            Column("tsv", TSVECTOR, nullable=False),
            PrimaryKeyConstraint("conversation_id", "message_id", name=f"{base}_recall_text_pkey"),
            Index(f"{base}_recall_text_tsv", "tsv", postgresql_using="gin"),
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
        self.lexical_function_name = f"{base}_recall_lexical"

    # -- schema ------------------------------------------------------------------------------

    def qualified(self, table: Table) -> str:
        """``table``'s name as it is spelled in SQL (quoted, with its schema)."""
        return self._preparer.format_table(table)

    @property
    def _preparer(self) -> Any:
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
        # Recall tables made by an earlier version: the index and settings they lack.
        for index in self.lexemes.indexes:
            conn.execute(CreateIndex(index, if_not_exists=True))
        target = conn.execute(
            text(
                "SELECT attstattarget FROM pg_attribute "
                "WHERE attrelid = to_regclass(:rel) AND attname = 'tsv'"
            ),
            {"rel": self.qualified(self.lexemes)},
        ).scalar()
        if target != LEXEME_STATISTICS:
            conn.execute(text(self.statistics_ddl()))
        conn.execute(text(self.lexical_function_ddl()))
        function, create_trigger = self.trigger_ddl()
        conn.execute(text(function))
        if trigger and not self.has_trigger(conn):
            # Only when missing: replacing it would lock the messages table on every start.
            conn.execute(text(create_trigger))
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
            {"name": self.trigger_name, "rel": self.qualified(self.messages)},
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
            func.to_regclass(literal(self.qualified(self.vectors))).isnot(None),
            func.to_regclass(literal(self.qualified(self.lexemes))).isnot(None),
        )

    def _function(self, name: str) -> str:
        q = self._preparer
        if self.mapping.schema:
            return f"{q.quote_schema(self.mapping.schema)}.{q.quote(name)}"
        return q.quote(name)

    def statistics_ddl(self) -> str:
        lexemes = self.qualified(self.lexemes)
        return f"ALTER TABLE {lexemes} ALTER COLUMN tsv SET STATISTICS {LEXEME_STATISTICS}"

    def lexical_function_ddl(self) -> str:
        """The lexical search of one conversation: ``(message_id, rank)`` of its messages
        older than ``before`` matching ``query``, best ``wanted`` first.

        The query holds specific words only (see :mod:`.recall_search`), found in few messages
        of the whole table: the GIN index finds them all at once (0.2 ms), where reading the
        conversation's lexemes grows with it (2 ms at 10 000 messages). Should a word match more
        than ``max_matches`` rows of the table (no statistics yet), the conversation's own
        rows are read instead: never slower than that. GIN needs bitmap scans, which the
        store's connections turn off for its ordered reads: hence a function, whose ``SET``
        applies to its own statement only.
        """
        lexemes = self.qualified(self.lexemes)
        key_type = self.messages.c.conversation_id.type.compile(dialect=postgresql.dialect())
        return f"""CREATE OR REPLACE FUNCTION {self._function(self.lexical_function_name)}(
    conversation {key_type}, query tsquery, before bigint, wanted integer, max_matches integer
) RETURNS TABLE (message_id bigint, rank real) LANGUAGE sql STABLE STRICT
SET enable_bitmapscan = on SET enable_seqscan = off AS $$
    WITH matches AS MATERIALIZED (
        SELECT t.conversation_id, t.message_id, t.tsv FROM {lexemes} AS t
        WHERE t.tsv @@ query LIMIT max_matches + 1
    )
    SELECT m.message_id, ts_rank_cd(m.tsv, query, 1) FROM matches AS m
    WHERE m.conversation_id = conversation AND m.message_id < before
        AND (SELECT count(*) FROM matches) <= max_matches
    UNION ALL
    SELECT t.message_id, ts_rank_cd(t.tsv, query, 1) FROM {lexemes} AS t
    WHERE t.conversation_id = conversation AND t.message_id < before
        AND (t.tsv @@ query) IS TRUE  -- not an index condition: the conversation's rows
        AND (SELECT count(*) FROM matches) > max_matches
    ORDER BY 2 DESC, 1 DESC LIMIT wanted
$$"""

    def trigger_ddl(self) -> list[str]:
        """The statement-level AFTER INSERT trigger that enqueues every new message row: its
        function, then the trigger."""
        q = self._preparer
        messages = self.qualified(self.messages)
        queue = self.qualified(self.queue)
        function = self._function(self.trigger_name)
        conv = q.quote(self.messages.c.conversation_id.name)
        row = q.quote(self.messages.c.id.name)
        return [
            f"""CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {queue} (conversation_id, message_id)
    SELECT {conv}, {row} FROM new_rows;
    RETURN NULL;
END $$""",
            f"""CREATE OR REPLACE TRIGGER {q.quote(self.trigger_name)}
AFTER INSERT ON {messages} REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION {function}()""",
        ]

    def message_columns(self) -> list[Any]:
        """The message's payload, role and content (NULL where the mapping lacks one)."""
        c = self.messages.c
        m = self.mapping
        return [
            cast(c.payload, Text).label("payload")
            if m.payload is not None
            else literal(None).label("payload"),
            c.role.label("role") if m.role is not None else literal(None).label("role"),
            c.content.label("content") if m.content is not None else literal(None).label("content"),
        ]
