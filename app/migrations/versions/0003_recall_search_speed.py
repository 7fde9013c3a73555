"""recall: a cheaper enqueue, the GIN index and the lexical search function

The same as lc_hybrid_memory's recall ``create_schema()`` now makes for ``messages``:

- the queue loses its primary key (every write paid a B-tree insertion for it; the indexer
  takes and deletes queue rows by ``ctid``) and the enqueue trigger a plain INSERT;
- ``messages_recall_text`` gets a GIN index over its ``tsvector`` and a larger statistics
  target (the lexical side searches only the words found in few messages, by those statistics);
- ``messages_recall_lexical()``: the lexical search of one conversation through that index
  (a function, so that its ``SET enable_bitmapscan = on`` holds for its own statement only).

Idempotent: a database where the library already made these is adopted as it is.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ENQUEUE = """CREATE OR REPLACE FUNCTION messages_recall_enqueue() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO messages_recall_queue (conversation_id, message_id)
    SELECT conversation_id, id FROM new_rows;
    RETURN NULL;
END $$"""

_LEXICAL = """CREATE OR REPLACE FUNCTION messages_recall_lexical(
    conversation TEXT, query tsquery, before bigint, wanted integer, max_matches integer
) RETURNS TABLE (message_id bigint, rank real) LANGUAGE sql STABLE STRICT
SET enable_bitmapscan = on SET enable_seqscan = off AS $$
    WITH matches AS MATERIALIZED (
        SELECT t.conversation_id, t.message_id, t.tsv FROM messages_recall_text AS t
        WHERE t.tsv @@ query LIMIT max_matches + 1
    )
    SELECT m.message_id, ts_rank_cd(m.tsv, query, 1) FROM matches AS m
    WHERE m.conversation_id = conversation AND m.message_id < before
        AND (SELECT count(*) FROM matches) <= max_matches
    UNION ALL
    SELECT t.message_id, ts_rank_cd(t.tsv, query, 1) FROM messages_recall_text AS t
    WHERE t.conversation_id = conversation AND t.message_id < before
        AND (t.tsv @@ query) IS TRUE  -- not an index condition: the conversation's rows
        AND (SELECT count(*) FROM matches) > max_matches
    ORDER BY 2 DESC, 1 DESC LIMIT wanted
$$"""


def upgrade() -> None:
    op.execute(
        "ALTER TABLE messages_recall_queue DROP CONSTRAINT IF EXISTS messages_recall_queue_pkey"
    )
    op.execute(_ENQUEUE)
    op.execute(
        "CREATE INDEX IF NOT EXISTS messages_recall_text_tsv "
        "ON messages_recall_text USING gin (tsv)"
    )
    op.execute("ALTER TABLE messages_recall_text ALTER COLUMN tsv SET STATISTICS 500")
    op.execute(_LEXICAL)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS messages_recall_lexical(text, tsquery, bigint, int, int)")
    op.execute("ALTER TABLE messages_recall_text ALTER COLUMN tsv SET STATISTICS -1")
    op.execute("DROP INDEX IF EXISTS messages_recall_text_tsv")
    op.execute(
        """CREATE OR REPLACE FUNCTION messages_recall_enqueue() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO messages_recall_queue (conversation_id, message_id)
            SELECT conversation_id, id FROM new_rows
            ON CONFLICT DO NOTHING;
            RETURN NULL;
        END $$"""
    )
    # Duplicates are possible without the key (a backfill racing a re-embedding): keep one.
    op.execute(
        "DELETE FROM messages_recall_queue a USING messages_recall_queue b "
        "WHERE a.ctid > b.ctid AND a.conversation_id = b.conversation_id "
        "AND a.message_id = b.message_id"
    )
    op.execute(
        "ALTER TABLE messages_recall_queue ADD CONSTRAINT messages_recall_queue_pkey "
        "PRIMARY KEY (conversation_id, message_id)"
    )
