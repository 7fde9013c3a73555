"""The ``conversations`` table: one row per (channel, contact, service number).

A conversation's ``id`` is the ``session_id`` of the memory, i.e. the ``conversation_id`` of its
rows in the ``messages`` table. It is text (a uuid hex) because that column is text.

There is deliberately no foreign key from ``messages.conversation_id`` to this table: the same
``messages`` table also holds sessions that do not come from Twilio (``hybrid-memory chat``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

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


def _unavailable(what: str, exc: DBAPIError) -> Exception:
    if exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError)):
        return StoreUnavailableError(f"Postgres unavailable: could not {what}")
    return exc


class ConversationStore:
    """Resolve-or-create and look-up of conversations (SQLAlchemy Core, one statement each),
    on an engine of the app's own (:func:`app.database.create_engine`)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def close(self) -> None:
        """Dispose of the engine's pool."""
        self.engine.dispose()

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
