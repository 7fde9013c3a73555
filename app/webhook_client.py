"""The client side of the webhook: what Twilio posts, signed as Twilio signs it, and the TwiML
that comes back. ``hybrid-memory send`` and the tests post with it."""

from __future__ import annotations

import uuid
from xml.etree import ElementTree

from twilio.request_validator import RequestValidator

SIGNATURE_HEADER = "X-Twilio-Signature"
# The numbers ``hybrid-memory send`` posts as, by default: a sender and "your Twilio number".
DEV_SENDER = "+15550001111"
DEV_SERVICE_NUMBER = "+15550002222"


def twilio_form(
    text: str,
    *,
    sender: str,
    to: str,
    account_sid: str | None = None,
    message_sid: str | None = None,
) -> dict[str, str]:
    """The form Twilio posts for an inbound SMS (the fields of its messaging webhook)."""
    message_sid = message_sid or f"SM{uuid.uuid4().hex}"
    return {
        "ToCountry": "US",
        "SmsMessageSid": message_sid,
        "NumMedia": "0",
        "SmsSid": message_sid,
        "SmsStatus": "received",
        "Body": text,
        "To": to,
        "NumSegments": str(max(1, -(-len(text) // 153))),
        "MessageSid": message_sid,
        "AccountSid": account_sid or "AC" + "0" * 32,
        "From": sender,
        "ApiVersion": "2010-04-01",
    }


def signature(token: str, url: str, form: dict[str, str]) -> str:
    """The ``X-Twilio-Signature`` of ``form`` posted to ``url``, signed with ``token``."""
    return RequestValidator(token).compute_signature(url, form)


def twiml_messages(xml: str) -> list[str]:
    """The texts of the ``<Message>`` verbs of a TwiML response (a strict XML parse: a
    document Twilio would reject raises here too)."""
    root = ElementTree.fromstring(xml)
    texts = []
    for message in root.iter("Message"):
        body = message.find("Body")
        texts.append((body.text if body is not None else message.text) or "")
    return texts
