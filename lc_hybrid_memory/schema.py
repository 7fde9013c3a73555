"""The ``messages`` table as SQLAlchemy Core, and the mapping onto an application's own table.

Postgres is the single source of truth: the library reads and writes the application's
``messages`` table, never a second "AI history" table. :class:`MessageTable` names the table and
its columns, so an existing table with other names works too; the defaults describe the schema
that :meth:`HybridMemory.create_schema` creates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import CITEXT, JSONB, UUID
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = ["JSONText", "MessageTable"]


class JSONText(TypeDecorator):
    """A ``jsonb`` column whose Python value is the JSON text itself.

    The codec already produced the text, so the driver must not encode it a second time.
    Reads select ``payload::text`` explicitly (psycopg2 would otherwise parse jsonb itself).
    """

    impl = JSONB
    cache_ok = True

    def bind_processor(self, dialect: Any) -> None:
        return None

    def result_processor(self, dialect: Any, coltype: Any) -> None:
        return None


_ID_TYPES: dict[str, type[TypeEngine[Any]]] = {
    "text": Text,
    "citext": CITEXT,
    "bigint": BigInteger,
    "uuid": UUID,
}


@dataclass(frozen=True)
class MessageTable:
    """Where messages live: table and column names, ``None`` for a column the table lacks.

    Example, for an application table ``chat_messages(pk, thread_id bigint, sender, body)``::

        MessageTable(name="chat_messages", id="pk", conversation_id="thread_id",
                     conversation_id_type="bigint", role="sender", content="body",
                     payload=None, message_uid=None, created_at=None)

    Session ids are canonicalised to the conversation id column's form before any cache key is
    built (see :mod:`lc_hybrid_memory.session_ids`); a ``character(n)`` column is not supported
    (its blank padding makes ``"a"`` and ``"a "`` one id): map such a column as ``text`` only if
    every id is written unpadded, or convert it to ``text``.

    Without ``payload`` the messages are rebuilt from role and content (text only); without
    ``message_uid`` writes are not idempotent. ``(conversation_id, id)`` must be indexed; if the
    table also has an index on ``id`` alone (a ``PRIMARY KEY (id)``), PostgreSQL may walk that
    one backwards for a conversation with many old rows — prefer ``PRIMARY KEY
    (conversation_id, id)`` as in the default schema.
    """

    name: str = "messages"
    schema: str | None = None
    id: str = "id"
    conversation_id: str = "conversation_id"
    conversation_id_type: Literal["text", "citext", "bigint", "uuid"] = "text"
    role: str | None = "role"
    content: str | None = "content"
    payload: str | None = "payload"
    message_uid: str | None = "message_uid"
    provider_sid: str | None = "provider_sid"
    created_at: str | None = "created_at"

    def __post_init__(self) -> None:
        if self.conversation_id_type not in _ID_TYPES:
            raise ValueError(
                f"conversation_id_type must be one of {sorted(_ID_TYPES)}, "
                f"not {self.conversation_id_type!r}"
            )
        if self.payload is None and (self.role is None or self.content is None):
            raise ValueError("a table without a payload column needs role and content columns")

    def build(self, metadata: MetaData | None = None) -> Table:
        """The SQLAlchemy ``Table`` (with the default schema's indexes) for this mapping."""
        metadata = metadata if metadata is not None else MetaData()
        conversation_type = _ID_TYPES[self.conversation_id_type]
        columns: list[Any] = [
            Column(self.id, BigInteger, Identity(always=False), nullable=False, key="id"),
            Column(self.conversation_id, conversation_type, nullable=False, key="conversation_id"),
        ]
        if self.role is not None:
            columns.append(Column(self.role, Text, nullable=False, key="role"))
        if self.content is not None:
            columns.append(Column(self.content, Text, nullable=False, key="content"))
        if self.payload is not None:
            columns.append(Column(self.payload, JSONText, nullable=False, key="payload"))
        if self.message_uid is not None:
            columns.append(Column(self.message_uid, Text, nullable=True, key="message_uid"))
        if self.provider_sid is not None:
            columns.append(Column(self.provider_sid, Text, nullable=True, key="provider_sid"))
        if self.created_at is not None:
            columns.append(
                Column(
                    self.created_at,
                    DateTime(timezone=True),
                    nullable=False,
                    server_default=func.now(),
                    key="created_at",
                )
            )
        # The primary key (conversation_id, id) serves "the last N of one conversation" as one
        # backward range scan. No index on id alone: with one, PostgreSQL may walk it backwards
        # and filter (the equality makes conversation_id redundant in the ORDER BY), reading
        # every newer row of other conversations — 125 ms instead of 0.06 ms for an old
        # conversation on 1 M rows. It is also the key a partitioned or Citus table needs.
        table = Table(
            self.name,
            metadata,
            *columns,
            PrimaryKeyConstraint("conversation_id", "id", name=f"{self.name}_pkey"),
            schema=self.schema,
        )
        self.build_stale_marks(metadata)
        if self.message_uid is not None:
            table.append_constraint(
                UniqueConstraint(
                    table.c.conversation_id,
                    table.c.message_uid,
                    name=f"uq_{self.name}_conversation_id_message_uid",
                )
            )
        return table

    @property
    def stale_marks_name(self) -> str:
        """The library's bookkeeping table of conversations whose cached list may be stale."""
        return f"{self.name}_cache_stale"

    def build_stale_marks(self, metadata: MetaData) -> Table:
        """Conversations written while Redis could not be reached, kept in Postgres so that any
        process (not only the one that wrote, which may have died) invalidates their cached
        lists once Redis answers again. Rows exist only during and after an outage."""
        existing = metadata.tables.get(
            f"{self.schema}.{self.stale_marks_name}" if self.schema else self.stale_marks_name
        )
        if existing is not None:
            return existing
        return Table(
            self.stale_marks_name,
            metadata,
            Column(
                "conversation_id",
                _ID_TYPES[self.conversation_id_type],
                primary_key=True,
                key="conversation_id",
            ),
            Column("marked_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
            schema=self.schema,
        )
