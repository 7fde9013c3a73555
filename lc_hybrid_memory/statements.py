"""The SQL of the store, built once per table mapping with SQLAlchemy Core. No I/O here.

Every statement filters one conversation. The ordered ones write the filter as a closed range
(``conversation_id >= :c AND conversation_id <= :c``): with an equality PostgreSQL treats the
column as a constant and drops it from ``ORDER BY conversation_id, id``; on a table that also has
an index on ``id`` alone (an application's ``PRIMARY KEY (id)``) it may then walk that index and
filter, reading every newer row of other conversations (915 ms instead of 0.07 ms for an old
conversation on 1 M rows). The range keeps the ORDER BY whole, so only the ``(conversation_id,
id)`` index can serve it, as one range scan of the window.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Integer,
    Text,
    and_,
    bindparam,
    cast,
    delete,
    func,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql import Executable

from . import codec
from .records import EncodedMessage, StoredMessage, StoredRow, WrittenRow
from .schema import MessageTable

__all__ = ["MessageStatements"]


class MessageStatements:
    """The statements of one mapped table; bound parameters are named after their role.

    The INSERT is one fixed statement whatever the number of rows (the rows travel as arrays
    through ``unnest``): compiled once, and a batch of any size is one statement, so one
    transaction — all or nothing.
    """

    def __init__(self, mapping: MessageTable) -> None:
        self.mapping = mapping
        self.table = mapping.build()
        c = self.table.c
        self._conversation = bindparam("conversation_key", type_=c.conversation_id.type)
        if mapping.payload is not None:
            self.payload_columns: tuple[Any, ...] = (cast(c.payload, Text),)
        else:
            self.payload_columns = (c.role, c.content)
        self.insert_columns = [
            name
            for name in ("role", "content", "payload", "message_uid")
            if getattr(mapping, name) is not None
        ]
        self.insert = self._insert()
        self.recent = (
            select(c.id, *self.payload_columns)
            .where(self._in_conversation())
            .order_by(c.conversation_id.desc(), c.id.desc())
            .limit(bindparam("limit", type_=Integer))
        )
        self.all = (
            select(c.id, *self.payload_columns)
            .where(self._in_conversation())
            .order_by(c.conversation_id, c.id)
        )
        self.stale_marks = mapping.build_stale_marks(self.table.metadata)
        marks = self.stale_marks
        self.mark_stale = (
            pg_insert(marks)
            .values(conversation_id=bindparam("mark_key", type_=c.conversation_id.type))
            .on_conflict_do_nothing(index_elements=[marks.c.conversation_id])
        )
        oldest = (
            select(marks.c.conversation_id)
            .order_by(marks.c.marked_at)
            .limit(bindparam("limit", type_=Integer))
            .scalar_subquery()
        )
        self.take_stale = (
            delete(marks)
            .where(marks.c.conversation_id.in_(oldest))
            .returning(marks.c.conversation_id)
        )
        self.count = select(func.count()).where(c.conversation_id == self._conversation)
        self.clear = delete(self.table).where(c.conversation_id == self._conversation)

    def _in_conversation(self, table: Any = None) -> Any:
        c = (table if table is not None else self.table).c
        key = self._conversation
        return and_(c.conversation_id >= key, c.conversation_id <= key)

    def optional(self, name: str) -> Any:
        """The mapped column ``name``, or a NULL where the table has no such column."""
        column = self.table.c.get(name)
        return column if column is not None else null()

    def _before(self, row_id: Any) -> Any:
        """The id of the conversation's row just before ``row_id`` (a correlated subquery)."""
        earlier = self.table.alias("earlier")
        return (
            select(earlier.c.id)
            .where(self._in_conversation(earlier))
            .where(earlier.c.id < row_id)
            .order_by(earlier.c.conversation_id.desc(), earlier.c.id.desc())
            .limit(1)
            .scalar_subquery()
        )

    def _insert(self) -> Executable:
        """``(position, row id, inserted, id before)`` for each incoming row, in input order.

        With a ``message_uid`` column a row already stored (a retry after a lost commit
        acknowledgement) is not inserted again but still reported with its row id, so the cache
        can be brought up to date; a row a concurrent statement stored a moment ago comes back
        with a NULL id. The "id before" comes from the statement's snapshot, which does not see
        the rows it inserts: the caller chains the batch's own rows.
        """
        c = self.table.c
        names = self.insert_columns
        arrays = [bindparam(f"{name}_values", type_=ARRAY(Text)) for name in names]
        rows = (
            func.unnest(*arrays)
            .table_valued(*names, with_ordinality="position")
            .render_derived(name="incoming_rows")
        )
        incoming = select(*(rows.c[name] for name in names), rows.c.position).cte("incoming")
        values = [
            cast(incoming.c[name], JSONB) if name == "payload" else incoming.c[name]
            for name in names
        ]
        insert = pg_insert(self.table).from_select(
            [c.conversation_id, *(c[name] for name in names)],
            select(self._conversation, *values).order_by(incoming.c.position),
        )
        if self.mapping.message_uid is None:
            inserted = insert.returning(c.id).cte("inserted")
            return select(
                literal(0), inserted.c.id, literal(True, Boolean), self._before(inserted.c.id)
            ).order_by(inserted.c.id)
        inserted = (
            insert.on_conflict_do_nothing(index_elements=[c.conversation_id, c.message_uid])
            .returning(c.id, c.message_uid)
            .cte("inserted")
        )
        # The row a retry finds already stored: looked up per incoming row through the unique
        # index. As a join, a generic plan (the statement is prepared) hashes every row of the
        # conversation instead (1.5 ms at 4 400 messages, growing with the conversation).
        stored = self.table.alias("stored")
        stored_id = (
            select(stored.c.id)
            .where(stored.c.conversation_id == self._conversation)
            .where(stored.c.message_uid == incoming.c.message_uid)
            .correlate(incoming)  # also inside the "id before" subquery, two levels down
            .scalar_subquery()
        )
        row_id = func.coalesce(inserted.c.id, stored_id)
        joined = incoming.outerjoin(inserted, inserted.c.message_uid == incoming.c.message_uid)
        return (
            select(incoming.c.position, row_id, inserted.c.id.is_not(None), self._before(row_id))
            .select_from(joined)
            .order_by(incoming.c.position)
        )

    def search(self) -> Executable:
        c = self.table.c
        searched = c.content if self.mapping.content is not None else cast(c.payload, Text)
        return (
            select(c.id, *self.payload_columns)
            .where(self._in_conversation())
            .where(searched.ilike(bindparam("pattern"), escape="\\"))
            .order_by(c.conversation_id.desc(), c.id.desc())
            .limit(bindparam("limit", type_=Integer))
        )

    def transcript(self, before_id: int | None, limit: int | None) -> Executable:
        c = self.table.c
        stmt = (
            select(
                c.id,
                *self.payload_columns,
                self.optional("message_uid"),
                self.optional("provider_sid"),
                self.optional("created_at"),
            )
            .where(self._in_conversation())
            .order_by(c.conversation_id.desc(), c.id.desc())
        )
        if before_id is not None:
            stmt = stmt.where(c.id < bindparam("before_id", type_=BigInteger))
        return stmt.limit(bindparam("limit", type_=Integer)) if limit is not None else stmt

    def turn_reply(self) -> Executable:
        if self.mapping.message_uid is None:
            raise ValueError("the mapped table has no message_uid column")
        c = self.table.c
        return (
            select(c.message_uid, self.optional("provider_sid"))
            .where(self._in_conversation())
            .where(c.message_uid.startswith(bindparam("turn_prefix"), escape="\\"))
            .order_by(c.conversation_id.desc(), c.id.desc())
            .limit(1)
        )

    def provider_sid(self) -> Executable:
        if self.mapping.provider_sid is None or self.mapping.message_uid is None:
            raise ValueError("the mapped table has no provider_sid or message_uid column")
        c = self.table.c
        return (
            update(self.table)
            .where(c.conversation_id == self._conversation)
            .where(c.message_uid == bindparam("uid"))
            .values(provider_sid=bindparam("new_provider_sid"))
        )

    def summaries(self) -> Executable:
        c = self.table.c
        last = func.max(c.created_at) if "created_at" in c else null()
        return (
            select(c.conversation_id, func.count(), last)
            .where(c.conversation_id.in_(bindparam("conversation_ids", expanding=True)))
            .group_by(c.conversation_id)
        )

    # -- parameters and results --------------------------------------------------------------

    def insert_params(
        self, conversation_key: Any, messages: Sequence[EncodedMessage]
    ) -> tuple[dict[str, Any], list[int]]:
        """The INSERT's arrays, and for each input message the position of its row among the
        rows sent (a repeat of an id within the call shares the first one's row)."""
        has_uid = self.mapping.message_uid is not None
        columns: dict[str, list[Any]] = {name: [] for name in self.insert_columns}
        positions: list[int] = []
        seen: dict[str, int] = {}
        for message in messages:
            if has_uid:
                # A generated uid makes a retried INSERT idempotent; it never enters the message.
                uid = message.uid if message.uid is not None else f"lchm-{uuid.uuid4().hex}"
                if uid in seen:
                    positions.append(seen[uid])
                    continue
                seen[uid] = len(seen) + 1
                columns["message_uid"].append(uid)
            for name in ("role", "content", "payload"):
                if name in columns:
                    columns[name].append(getattr(message, name))
            positions.append(len(columns[self.insert_columns[0]]))
        params: dict[str, Any] = {"conversation_key": conversation_key}
        params.update({f"{name}_values": values for name, values in columns.items()})
        return params, positions

    @staticmethod
    def written(result: Any, positions: list[int], has_uid: bool) -> list[WrittenRow]:
        """Each input message's outcome, its "row before" chained through the batch itself."""
        rows = list(result)
        if not has_uid:  # one INSERT draws identity values in VALUES order
            rows = [(index + 1, *row[1:]) for index, row in enumerate(rows)]
        by_position = {position: (row_id, new, before) for position, row_id, new, before in rows}
        known = sorted(row_id for row_id, _, _ in by_position.values() if row_id is not None)
        written: list[WrittenRow] = []
        reported: set[int] = set()
        for position in positions:
            row_id, new, before = by_position[position]
            first = position not in reported
            reported.add(position)
            if row_id is None:
                written.append(WrittenRow(None, False, 0))
                continue
            earlier = [other for other in known if other < row_id]
            chained = max(before or 0, earlier[-1] if earlier else 0)
            written.append(WrittenRow(row_id, bool(new) and first, chained))
        return written

    def rows(self, result: Any) -> list[StoredMessage]:
        if self.mapping.payload is not None:
            return [StoredMessage(row[0], row[1]) for row in result]
        return [
            StoredMessage(row[0], codec.from_role_and_content(row[1], row[2])) for row in result
        ]

    def transcript_rows(self, result: Any) -> list[StoredRow]:
        width = len(self.payload_columns)
        rows = []
        for row in result:
            payload = row[1] if width == 1 else codec.from_role_and_content(row[1], row[2])
            uid, provider_sid, created_at = row[1 + width :]
            rows.append(StoredRow(row[0], payload, uid, provider_sid, created_at))
        rows.reverse()
        return rows
