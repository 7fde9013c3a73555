"""semantic recall tables next to messages

The same tables, trigger and keys as lc_hybrid_memory's recall ``create_schema()`` for the
default ``messages`` table: the pending queue (filled by a statement-level trigger inside every
INSERT into ``messages``), the stored ``tsvector`` per message, and the pgvector vectors per
message and embedder, both cascading with their message. On a server without pgvector the
vectors table is left out and recall is lexical (the library says so at start). Recall tables
the library's ``create_schema()`` made already (``hybrid-memory chat`` before the first
migration, recall on) are adopted as they are.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_REFERENCE = (["conversation_id", "message_id"], ["messages.conversation_id", "messages.id"])


def _pgvector(bind: sa.engine.Connection) -> bool:
    if bind.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")).first():
        return True
    available = bind.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
    ).first()
    if available is None:
        return False
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    return True


def _missing(bind: sa.engine.Connection, name: str) -> bool:
    """Whether the table is not there yet (``hybrid-memory chat`` with recall on may have made
    the recall tables through the library's create_schema() before the first migration)."""
    return bind.execute(sa.text("SELECT to_regclass(:name) IS NULL"), {"name": name}).scalar()


def upgrade() -> None:
    bind = op.get_bind()
    if _missing(bind, "messages_recall_queue"):
        _create_queue()
    if _missing(bind, "messages_recall_text"):
        _create_lexemes()
    if _pgvector(bind) and _missing(bind, "messages_recall_vectors"):
        _create_vectors()
    _create_trigger(bind)
    # Messages stored before this migration: queued for the indexer (`hybrid-memory index`).
    op.execute(
        "INSERT INTO messages_recall_queue (conversation_id, message_id) "
        "SELECT conversation_id, id FROM messages m WHERE NOT EXISTS (SELECT FROM "
        "messages_recall_queue q WHERE q.conversation_id = m.conversation_id "
        "AND q.message_id = m.id) AND NOT EXISTS (SELECT FROM messages_recall_text t "
        "WHERE t.conversation_id = m.conversation_id AND t.message_id = m.id)"
    )


def _create_queue() -> None:
    op.create_table(
        "messages_recall_queue",
        sa.Column("conversation_id", sa.Text(), nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "enqueued_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("conversation_id", "message_id", name="messages_recall_queue_pkey"),
    )


def _create_lexemes() -> None:
    op.create_table(
        "messages_recall_text",
        sa.Column("conversation_id", sa.Text(), nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("tsv", postgresql.TSVECTOR(), nullable=False),
        sa.PrimaryKeyConstraint("conversation_id", "message_id", name="messages_recall_text_pkey"),
        sa.ForeignKeyConstraint(
            *_REFERENCE, ondelete="CASCADE", name="messages_recall_text_message_fkey"
        ),
    )


def _create_vectors() -> None:
    op.execute(
        """CREATE TABLE messages_recall_vectors (
            conversation_id text NOT NULL,
            message_id bigint NOT NULL,
            model text NOT NULL,
            dimensions integer,
            embedding vector,
            CONSTRAINT messages_recall_vectors_pkey
                PRIMARY KEY (conversation_id, message_id, model),
            CONSTRAINT messages_recall_vectors_message_fkey
                FOREIGN KEY (conversation_id, message_id)
                REFERENCES messages (conversation_id, id) ON DELETE CASCADE
        )"""
    )


def _create_trigger(bind: sa.engine.Connection) -> None:
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
    exists = bind.execute(
        sa.text(
            "SELECT 1 FROM pg_trigger WHERE tgname = 'messages_recall_enqueue' "
            "AND tgrelid = 'messages'::regclass"
        )
    ).first()
    if exists is None:
        op.execute(
            """CREATE TRIGGER messages_recall_enqueue
            AFTER INSERT ON messages REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION messages_recall_enqueue()"""
        )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS messages_recall_enqueue ON messages")
    op.execute("DROP FUNCTION IF EXISTS messages_recall_enqueue()")
    op.execute("DROP TABLE IF EXISTS messages_recall_vectors")
    op.drop_table("messages_recall_text")
    op.drop_table("messages_recall_queue")
