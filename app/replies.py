"""A reply on the wire: SMS-sized parts, and TwiML that every XML parser accepts.

Both reply modes cut the answer with :func:`split_reply`; the inline mode wraps the parts in a
TwiML ``MessagingResponse`` (:func:`twiml`). A model may echo what the user sent, control
characters included, and XML 1.0 cannot carry most of them (NUL, BEL, ESC... not even as
character references): Twilio would reject the whole document and the reply would be lost. So
those characters are dropped from the TwiML; the rest of the text goes out unchanged.
"""

from __future__ import annotations

import re

from twilio.twiml.messaging_response import MessagingResponse

SMS_MAX_CHARS = 1600  # Twilio's limit for one message body, inbound and outbound

# Everything outside XML 1.0's Char production: C0 controls but tab, LF and CR; surrogates;
# U+FFFE and U+FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_safe(text: str) -> str:
    """``text`` without the characters XML 1.0 cannot hold."""
    return _NOT_XML.sub("", text)


def split_reply(text: str, limit: int = SMS_MAX_CHARS) -> list[str]:
    """``text`` in parts of at most ``limit`` characters, cut at whitespace where possible."""
    text = text.strip()
    parts: list[str] = []
    while len(text) > limit:
        cut = text.rfind("\n", 0, limit + 1)
        if cut < limit // 2:
            cut = text.rfind(" ", 0, limit + 1)
        if cut < limit // 2:  # one long word: cut it
            cut = limit
        parts.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    if text:
        parts.append(text)
    return parts


def twiml(*texts: str) -> str:
    """A TwiML ``MessagingResponse`` with one ``<Message>`` per non-empty text (none: an empty
    ack)."""
    response = MessagingResponse()
    for text in map(xml_safe, texts):
        if text.strip():
            response.message(text)
    return str(response)
