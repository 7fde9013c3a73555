"""Session ids: validated, then written in the one form the conversation id column stores.

A bigint column reads ``"1"``, ``"01"``, ``" 1"`` and ``"+1"`` as the same conversation, and a uuid
column reads upper case, braces and ``urn:uuid:`` spellings as one; the cache key must not tell
them apart. So every id is canonicalised to the column's form before any key is built:

==========  ===========================================================================
column      canonical form
==========  ===========================================================================
``text``    the id itself (exact: ``"a"`` and ``"A"`` are two conversations)
``citext``  lower case (the comparison citext makes)
``bigint``  ASCII decimal digits without sign or leading zeros; ``"-5"`` stays negative;
            only ASCII digits are accepted (``"１"`` is refused: Postgres refuses it too)
``uuid``    lower-case hyphenated (``str(uuid.UUID(...))``)
==========  ===========================================================================
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from typing import Any

from .errors import InvalidSessionIdError

__all__ = ["MAX_SESSION_ID_LENGTH", "canonical_session_id", "validate_session_id"]

MAX_SESSION_ID_LENGTH = 256

_BIGINT = re.compile(r"[ \t\n\r\f\v]*([+-]?)([0-9]+)[ \t\n\r\f\v]*")
_BIGINT_MAX = 2**63 - 1


def validate_session_id(session_id: Any) -> str:
    """``session_id`` as a string, or :class:`InvalidSessionIdError` naming the problem."""
    if isinstance(session_id, bool) or not isinstance(session_id, (str, int, uuid.UUID)):
        raise InvalidSessionIdError(f"session id must be a string, got {type(session_id).__name__}")
    sid = str(session_id)
    if not sid:
        raise InvalidSessionIdError("session id is empty")
    if len(sid) > MAX_SESSION_ID_LENGTH:
        raise InvalidSessionIdError(
            f"session id is {len(sid)} characters long; the limit is {MAX_SESSION_ID_LENGTH}"
        )
    for position, char in enumerate(sid):
        category = unicodedata.category(char)
        if category == "Cc":
            raise InvalidSessionIdError(
                f"session id contains control character U+{ord(char):04X} at position {position}"
            )
        if category == "Cs":
            raise InvalidSessionIdError(
                f"session id contains unpaired surrogate U+{ord(char):04X} at position {position}"
            )
    return sid


def canonical_session_id(session_id: Any, column_type: str = "text") -> str:
    """The validated id in the canonical form of ``column_type`` (see the module doc)."""
    sid = validate_session_id(session_id)
    if column_type == "text":
        return sid
    if column_type == "citext":
        return sid.lower()
    if column_type == "bigint":
        match = _BIGINT.fullmatch(sid)
        if match is None:
            raise InvalidSessionIdError(
                f"session id {sid!r} is not a valid bigint conversation id (ASCII digits only)"
            )
        value = int(match.group(1) + match.group(2))
        if not -_BIGINT_MAX - 1 <= value <= _BIGINT_MAX:
            raise InvalidSessionIdError(f"session id {sid!r} is out of the bigint range")
        return str(value)
    if column_type == "uuid":
        try:
            return str(uuid.UUID(sid.strip()))
        except ValueError:
            raise InvalidSessionIdError(
                f"session id {sid!r} is not a valid uuid conversation id"
            ) from None
    raise ValueError(f"unknown conversation id column type {column_type!r}")
