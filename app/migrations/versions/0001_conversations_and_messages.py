"""conversations and messages

The ``messages`` table is exactly lc_hybrid_memory's default schema (``MessageTable()``), so
``HybridMemory`` reads and writes it with its default mapping; ``tests/test_app_migrations.py``
checks that the two never drift apart. A database where ``HybridMemory.create_schema()`` already
made the table (``hybrid-memory chat`` before the first migration) is adopted as it is.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("contact", sa.Text(), nullable=False),
        sa.Column("service_number", sa.Text(), nullable=False),
        sa.Column("messaging_service_sid", sa.Text(), nullable=True),
        sa.Column("account_sid", sa.Text(), nullable=True),
        sa.Column("profile_name", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "last_message_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.UniqueConstraint(
            "channel", "contact", "service_number", name="uq_conversations_channel_contact_service"
        ),
    )
    if sa.inspect(op.get_bind()).has_table("messages"):
        return  # made earlier by HybridMemory.create_schema(): the same schema, keep its rows
    op.create_table(
        "messages",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("conversation_id", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("message_uid", sa.Text(), nullable=True),
        sa.Column("provider_sid", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        # (conversation_id, id) serves the window query; no index on id alone (see the
        # library's schema.py for why).
        sa.PrimaryKeyConstraint("conversation_id", "id", name="messages_pkey"),
        sa.UniqueConstraint(
            "conversation_id", "message_uid", name="uq_messages_conversation_id_message_uid"
        ),
    )


def downgrade() -> None:
    op.drop_table("messages")
    op.drop_table("conversations")
