"""The ``conversations`` table: one row per (channel, contact, service number).

A conversation's ``id`` is the ``session_id`` of the memory, i.e. the ``conversation_id`` of its
rows in the ``messages`` table. It is text (a uuid hex) because that column is text.

There is deliberately no foreign key from ``messages.conversation_id`` to this table: the same
``messages`` table also holds sessions that do not come from Twilio (``hybrid-memory chat``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from lc_hybrid_memory import StoreUnavailableError

metadata = sa.MetaData()

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("channel", sa.Text, nullable=False),  # sms | whatsapp | messenger ...
    sa.Column("contact", sa.Text, nullable=False),  # the sender, without the channel prefix
    sa.Column("service_number", sa.Text, nullable=False),  # our number, without the prefix
    sa.Column("messaging_service_sid", sa.Text, nullable=True),
    sa.Column("account_sid", sa.Text, nullable=True),
    sa.Column("profile_name", sa.Text, nullable=True),  # WhatsApp display name
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Column(
        "last_message_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.UniqueConstraint(
        "channel", "contact", "service_number", name="uq_conversations_channel_contact_service"
    ),
)


@dataclass(frozen=True)
class Address:
    """A Twilio address split into channel and number: ``whatsapp:+1555`` → (whatsapp, +1555)."""

    channel: str
    number: str

    @classmethod
    def parse(cls, raw: str) -> Address:
        channel, sep, number = raw.partition(":")
        if sep and channel.isalpha():
            return cls(channel.lower(), number)
        return cls("sms", raw)

    def twilio(self) -> str:
        """The address as Twilio's REST API expects it in ``to`` / ``from_``."""
        return self.number if self.channel == "sms" else f"{self.channel}:{self.number}"


@dataclass(frozen=True)
class Conversation:
    id: str
    channel: str
    contact: str
    service_number: str
    messaging_service_sid: str | None = None

    @property
    def contact_address(self) -> str:
        return Address(self.channel, self.contact).twilio()

    @property
    def service_address(self) -> str:
        return Address(self.channel, self.service_number).twilio()


@dataclass(frozen=True)
class ConversationRow:
    """A conversation as an operator lists it."""

    id: str
    channel: str
    contact: str
    service_number: str
    profile_name: str | None
    created_at: datetime
    last_message_at: datetime  # the last inbound message (the webhook touches it)

    @property
    def cursor(self) -> str:
        """Where the next page (the conversations active before this one) starts."""
        return f"{self.last_message_at.isoformat()}|{self.id}"


def parse_cursor(cursor: str) -> tuple[datetime, str]:
    """``(last_message_at, id)`` of a :attr:`ConversationRow.cursor`; ValueError if malformed."""
    at, sep, conversation_id = cursor.partition("|")
    if not sep or not conversation_id:
        raise ValueError(f"malformed page cursor {cursor!r}")
    moment = datetime.fromisoformat(at)
    if moment.tzinfo is None:
        raise ValueError(f"malformed page cursor {cursor!r}")
    return moment, conversation_id


def _like_pattern(text: str) -> str:
    """``%text%`` with LIKE's wildcards in ``text`` taken literally (escape ``\\``)."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


_ROW_COLUMNS = (
    conversations.c.id,
    conversations.c.channel,
    conversations.c.contact,
    conversations.c.service_number,
    conversations.c.profile_name,
    conversations.c.created_at,
    conversations.c.last_message_at,
)


def _unavailable(what: str, exc: DBAPIError) -> Exception:
    if exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError)):
        return StoreUnavailableError(f"Postgres unavailable: could not {what}")
    return exc


class ConversationStore:
    """Resolve-or-create and look-up of conversations (SQLAlchemy Core, one statement each)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def resolve(
        self,
        sender: Address,
        service: Address,
        *,
        messaging_service_sid: str | None = None,
        account_sid: str | None = None,
        profile_name: str | None = None,
    ) -> Conversation:
        """The conversation of this sender with this service number, created if new.

        One upsert: concurrent first messages of a new contact still get one conversation.
        """
        table = conversations
        stmt = pg_insert(table).values(
            id=uuid.uuid4().hex,
            channel=sender.channel,
            contact=sender.number,
            service_number=service.number,
            messaging_service_sid=messaging_service_sid,
            account_sid=account_sid,
            profile_name=profile_name,
        )
        stmt = stmt.on_conflict_do_update(
            constraint="uq_conversations_channel_contact_service",
            set_={
                "last_message_at": sa.func.now(),
                "profile_name": sa.func.coalesce(stmt.excluded.profile_name, table.c.profile_name),
                "messaging_service_sid": sa.func.coalesce(
                    stmt.excluded.messaging_service_sid, table.c.messaging_service_sid
                ),
            },
        ).returning(table.c.id, table.c.messaging_service_sid)
        try:
            with self.engine.begin() as conn:
                row = conn.execute(stmt).one()
        except DBAPIError as exc:
            raise _unavailable("resolve the conversation", exc) from exc
        return Conversation(
            id=row.id,
            channel=sender.channel,
            contact=sender.number,
            service_number=service.number,
            messaging_service_sid=row.messaging_service_sid,
        )

    def get(self, conversation_id: str) -> Conversation | None:
        """The conversation with this id, or ``None``."""
        c = conversations.c
        stmt = sa.select(
            c.id, c.channel, c.contact, c.service_number, c.messaging_service_sid
        ).where(c.id == conversation_id)
        try:
            with self.engine.connect() as conn:
                row = conn.execute(stmt).one_or_none()
        except DBAPIError as exc:
            raise _unavailable("read the conversation", exc) from exc
        if row is None:
            return None
        return Conversation(
            id=row.id,
            channel=row.channel,
            contact=row.contact,
            service_number=row.service_number,
            messaging_service_sid=row.messaging_service_sid,
        )

    def page(
        self, *, search: str | None = None, limit: int = 25, before: str | None = None
    ) -> list[ConversationRow]:
        """Conversations, most recently active first; ``search`` matches the contact, the
        profile name or the start of the id; ``before`` is the last row's ``cursor`` of the
        previous page (keyset paging: a page costs the same however deep it is)."""
        c = conversations.c
        stmt = sa.select(*_ROW_COLUMNS).order_by(c.last_message_at.desc(), c.id.desc())
        if search:
            pattern = _like_pattern(search.strip())
            stmt = stmt.where(
                sa.or_(
                    c.contact.ilike(pattern, escape="\\"),
                    c.profile_name.ilike(pattern, escape="\\"),
                    c.id.startswith(search.strip(), autoescape=True),
                )
            )
        if before is not None:
            at, conversation_id = parse_cursor(before)
            stmt = stmt.where(
                sa.tuple_(c.last_message_at, c.id) < sa.tuple_(sa.literal(at), conversation_id)
            )
        return self._rows(stmt.limit(limit), "list the conversations")

    def find_contact(self, contact: str) -> list[ConversationRow]:
        """The conversations of a contact (``+15550001111``, ``whatsapp:+15550001111``), most
        recently active first: one per channel and service number it wrote to."""
        address = Address.parse(contact.strip())
        c = conversations.c
        stmt = sa.select(*_ROW_COLUMNS).where(c.contact == address.number)
        if ":" in contact:  # the channel was given
            stmt = stmt.where(c.channel == address.channel)
        stmt = stmt.order_by(c.last_message_at.desc(), c.id.desc())
        return self._rows(stmt, "find the contact's conversations")

    def row(self, conversation_id: str) -> ConversationRow | None:
        """The listing row of one conversation, or ``None``."""
        stmt = sa.select(*_ROW_COLUMNS).where(conversations.c.id == conversation_id)
        rows = self._rows(stmt, "read the conversation")
        return rows[0] if rows else None

    def delete(self, conversation_id: str) -> bool:
        """Delete the conversation's row (its messages are the memory's); whether it existed."""
        stmt = sa.delete(conversations).where(conversations.c.id == conversation_id)
        try:
            with self.engine.begin() as conn:
                return conn.execute(stmt).rowcount > 0
        except DBAPIError as exc:
            raise _unavailable("delete the conversation", exc) from exc

    def _rows(self, stmt: sa.Select, what: str) -> list[ConversationRow]:
        try:
            with self.engine.connect() as conn:
                return [ConversationRow(*row) for row in conn.execute(stmt)]
        except DBAPIError as exc:
            raise _unavailable(what, exc) from exc
