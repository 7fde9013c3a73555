"""``POST /twilio/messages``: verify → parse → conversation → store inbound → turn → TwiML.

The order matters:

1. The signature is checked first (``RequestValidator`` over every posted parameter and the
   public URL): nothing from an unsigned request is trusted, stored or even rate-counted.
2. The per-sender rate limit (Flask-Limiter on Redis) comes next, so forged traffic cannot
   spend a real sender's budget.
3. Validation refuses bad input with a 4xx *before* any write.
4. The inbound message is stored in Postgres with ``id = MessageSid`` before any 2xx: a retry
   of the same MessageSid is a no-op there (the library's writes are idempotent by id).
5. The turn runs inline (TwiML reply) or in the RQ worker (empty ``<Response/>`` now, REST reply
   later); :mod:`app.turns` makes it once-only and ordered per conversation.

A turn is one pass, in one direction: the view queues it (learning in the same round trip
whether this MessageSid was answered before), runs the conversation up to it and renders the
state it ended in (:mod:`app.replies`); nothing is read back.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Blueprint, Response, g, request
from flask_limiter import Limiter
from langchain_core.messages import HumanMessage
from redis.exceptions import RedisClusterException, RedisError
from twilio.request_validator import RequestValidator

from lc_hybrid_memory import InvalidMessageError, StoreUnavailableError

from .conversations import Address
from .observability import Stopwatch
from .replies import split_reply
from .replies import twiml as twiml_document
from .settings import WEBHOOK_PATH, Settings
from .turns import TurnRecord, TurnStatus
from .webhook_auth import signed_url
from .webhook_client import SIGNATURE_HEADER
from .wiring import Services, services

logger = logging.getLogger(__name__)

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

# Twilio ids: two capital letters and 32 hex digits (SM.../MM... for messages, AC... accounts).
_SID = re.compile(r"^[A-Z]{2}[0-9a-fA-F]{32}$")
# Addresses (From/To): "+15551234567", "whatsapp:+15551234567", "messenger:1234"... are short.
# Longer ones would not fit the conversations index; control characters (NUL above all: Postgres
# text cannot hold it) are never part of an address.
MAX_ADDRESS_CHARS = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_PROFILE_NAME_CHARS = 256

MEDIA_ONLY_REPLY = "I can only read text messages for now. Please send your question as text."
EMPTY_REPLY = "Send me a text message and I will answer."

F = TypeVar("F", bound=Callable[..., Any])


def twiml(*texts: str) -> Response:
    """A TwiML ``MessagingResponse``: one ``<Message>`` per text (none: an empty ack)."""
    return Response(twiml_document(*texts), status=200, mimetype="application/xml")


def refuse(status: int, reason: str, outcome: str) -> Response:
    """A short plain-text 4xx/5xx, counted by outcome."""
    services().metrics.webhook_requests.labels(outcome=outcome).inc()
    return Response(reason + "\n", status=status, mimetype="text/plain")


def verified_by_twilio(view: F) -> F:
    """Refuse (403) a request whose ``X-Twilio-Signature`` is missing or does not match."""

    @functools.wraps(view)
    def checked(*args: Any, **kwargs: Any) -> Any:
        svc = services()
        signature = request.headers.get(SIGNATURE_HEADER, "")
        url = signed_url(svc.settings, request)
        if url is None:
            # Signed, perhaps, but for another host (another app of the same account).
            logger.warning("refused a webhook addressed to a host not in PUBLIC_HOSTS")
            return refuse(403, "not addressed to this app", "forbidden")
        # request.form is empty for other content types; a signed one is refused later (415).
        if not signature or not RequestValidator(svc.auth_token).validate(
            url, request.form, signature
        ):
            logger.warning(
                "refused a webhook with a %s signature", "wrong" if signature else "missing"
            )
            return refuse(403, "invalid Twilio signature", "forbidden")
        return view(*args, **kwargs)

    return checked  # type: ignore[return-value]


def sender_key() -> str:
    """Rate-limit key: the sender address (``From``), as Twilio sent it."""
    return "sender:" + request.form.get("From", "unknown")


@dataclass(frozen=True)
class InboundMessage:
    """The fields of a Twilio message webhook that the app uses (others are signed, ignored)."""

    message_sid: str
    account_sid: str
    sender: Address
    service: Address
    body: str
    num_media: int
    messaging_service_sid: str | None
    profile_name: str | None


class BadWebhook(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def parse_inbound(form: Any, settings: Settings) -> InboundMessage:
    """The inbound message, or :class:`BadWebhook` naming what is wrong with it."""
    missing = [name for name in ("MessageSid", "From", "To") if not form.get(name)]
    if missing:
        raise BadWebhook(400, f"missing {', '.join(missing)}")
    message_sid = form["MessageSid"]
    if not _SID.match(message_sid):
        raise BadWebhook(400, "malformed MessageSid")
    account_sid = form.get("AccountSid", "")
    if settings.twilio_account_sid and account_sid != settings.twilio_account_sid:
        # Signed with our token but for another account: refuse, as Twilio's guides advise.
        raise BadWebhook(403, "AccountSid does not match this app")
    if account_sid and not _SID.match(account_sid):
        raise BadWebhook(400, "malformed AccountSid")
    service_sid = form.get("MessagingServiceSid") or None
    if service_sid is not None and not _SID.match(service_sid):
        raise BadWebhook(400, "malformed MessagingServiceSid")
    sender, service = _address(form, "From"), _address(form, "To")
    body = form.get("Body", "")
    if len(body) > settings.max_body_chars:
        raise BadWebhook(413, f"Body longer than {settings.max_body_chars} characters")
    try:
        num_media = int(form.get("NumMedia") or 0)
    except ValueError:
        raise BadWebhook(400, "NumMedia is not a number") from None
    return InboundMessage(
        message_sid=message_sid,
        account_sid=account_sid,
        sender=sender,
        service=service,
        body=body,
        num_media=num_media,
        messaging_service_sid=service_sid,
        # A display name is no reason to refuse a message: keep what Postgres can store.
        profile_name=_CONTROL.sub("", form.get("ProfileName", ""))[:MAX_PROFILE_NAME_CHARS] or None,
    )


def _address(form: Any, name: str) -> Address:
    raw = form[name]
    if len(raw) > MAX_ADDRESS_CHARS or _CONTROL.search(raw):
        raise BadWebhook(400, f"malformed {name}")
    address = Address.parse(raw)
    if not address.number.strip():
        raise BadWebhook(400, f"malformed {name}")
    return address


def create_blueprint(settings: Settings, limiter: Limiter) -> Blueprint:
    """The Twilio blueprint; the rate limit (if any) wraps the view inside the signature check."""
    blueprint = Blueprint("twilio", __name__)
    view: Callable[[], Response] = inbound_message
    if settings.rate_limit:
        view = limiter.limit(
            settings.rate_limit,
            key_func=sender_key,
            error_message="too many messages from this sender",
        )(view)
    blueprint.add_url_rule(WEBHOOK_PATH, view_func=verified_by_twilio(view), methods=["POST"])
    return blueprint


def inbound_message() -> Response:
    """The webhook view (behind the signature check and the rate limit)."""
    svc = services()
    settings = svc.settings
    watch = Stopwatch()
    try:
        if request.mimetype != FORM_CONTENT_TYPE:
            return refuse(415, f"expected {FORM_CONTENT_TYPE}", "invalid")
        try:
            inbound = parse_inbound(request.form, settings)
        except BadWebhook as bad:
            return refuse(bad.status, bad.reason, "forbidden" if bad.status == 403 else "invalid")
        if not inbound.body.strip():
            # Nothing the agent can answer: say so, store nothing.
            outcome = "media_only" if inbound.num_media else "empty"
            svc.metrics.webhook_requests.labels(outcome=outcome).inc()
            return twiml(MEDIA_ONLY_REPLY if inbound.num_media else EMPTY_REPLY)
        return _accept(svc, inbound)
    finally:
        svc.metrics.webhook_latency.labels(mode=settings.reply_mode).observe(watch.seconds)


def _accept(svc: Services, inbound: InboundMessage) -> Response:
    """Store the inbound message durably, then reply inline or hand the turn to the worker."""
    try:
        conversation = svc.conversations.resolve(
            inbound.sender,
            inbound.service,
            messaging_service_sid=inbound.messaging_service_sid,
            account_sid=inbound.account_sid or None,
            profile_name=inbound.profile_name,
        )
        g.conversation_id = conversation.id  # answered in X-Conversation-Id (app/__init__.py)
        human = HumanMessage(inbound.body, id=inbound.message_sid)
        [is_new] = svc.memory.add_messages(conversation.id, [human])
    except StoreUnavailableError:
        # Nothing durable yet: a 5xx lets Twilio fail over to the fallback URL.
        logger.exception("postgres unavailable; inbound message not accepted")
        return refuse(503, "temporarily unavailable", "unavailable")
    except InvalidMessageError:
        # Postgres refuses this message for good (a constraint of the table, data it cannot
        # hold): a retry would fail the same way, so it is a client error, not an outage.
        logger.warning("inbound message refused by the store", exc_info=True)
        return refuse(400, "message refused", "refused")
    log = {
        "conversation_id": conversation.id,
        "message_sid": inbound.message_sid,
        "channel": inbound.sender.channel,
    }
    logger.info(
        "inbound message %s",
        "stored" if is_new else "already stored (retry)",
        extra={**log, "chars": len(inbound.body), "outcome": "new" if is_new else "duplicate"},
    )
    if inbound.num_media:
        logger.info("ignoring %d media attachment(s)", inbound.num_media, extra=log)
    try:
        known = svc.turns.enqueue(conversation.id, inbound.message_sid, inbound.body)
        if svc.settings.reply_mode == "async":
            return _hand_to_worker(svc, conversation.id, is_new, known)
        return _reply_inline(svc, conversation.id, inbound.message_sid, is_new, known)
    except (RedisError, RedisClusterException):  # the latter is no RedisError
        # The message is safe in Postgres; the turn machinery is not reachable.
        svc.metrics.agent_errors.labels(error="RedisUnavailable").inc()
        logger.exception("redis unavailable; replying with the apology", extra=log)
        return _counted(svc, "apology", twiml(svc.settings.apology_text))


def _counted(svc: Services, outcome: str, response: Response) -> Response:
    svc.metrics.webhook_requests.labels(outcome=outcome).inc()
    return response


def _hand_to_worker(
    svc: Services, conversation_id: str, is_new: bool, known: TurnRecord | None
) -> Response:
    from .worker import enqueue_kwargs, process_conversation

    if known is not None and known.finished and not is_new:
        # A retry of a turn already answered: the reply went (or goes) out through the API.
        return _counted(svc, "duplicate", twiml())
    # One job per inbound; a job that finds the queue drained by an earlier one does nothing.
    svc.queue.enqueue(
        process_conversation,
        conversation_id,
        description=f"turns of conversation {conversation_id}",
        **enqueue_kwargs(svc.settings),
    )
    return _counted(svc, "acked" if is_new else "duplicate", twiml())


def _reply_inline(
    svc: Services,
    conversation_id: str,
    message_sid: str,
    is_new: bool,
    known: TurnRecord | None,
) -> Response:
    record = known
    if record is None or not record.finished:
        record = svc.turns.run_until(
            conversation_id, message_sid, wait_seconds=svc.settings.inline_wait_seconds
        )
    if record is None or not record.finished:
        # Another request holds the conversation beyond our budget: ack; nothing is lost.
        logger.warning(
            "conversation busy; acknowledged without a reply",
            extra={"conversation_id": conversation_id, "message_sid": message_sid},
        )
        return _counted(svc, "busy", twiml())
    outcome = "replied" if is_new else "duplicate"
    if record.status is TurnStatus.FAILED:
        outcome = "apology"
    return _counted(svc, outcome, twiml(*split_reply(record.reply)))
