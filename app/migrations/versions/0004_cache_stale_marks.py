"""the memory's stale-marks table next to messages

``messages_cache_stale`` is lc_hybrid_memory's ``MessageTable().build_stale_marks()``: the
conversations written while Redis could not be reached, so that whichever process reaches Redis
next invalidates their cached lists (the writer itself may have died). Empty outside outages.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("messages_cache_stale"):
        return  # made by the library's create_schema() before the app's migrations ran
    op.create_table(
        "messages_cache_stale",
        sa.Column("conversation_id", sa.Text(), primary_key=True),
        sa.Column(
            "marked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )


def downgrade() -> None:
    op.drop_table("messages_cache_stale")
