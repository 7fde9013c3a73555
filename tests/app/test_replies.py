"""A reply on the wire: SMS-sized parts, and TwiML a strict XML parser (Twilio's) accepts even
when the answer echoes control characters from the user's own message."""

from __future__ import annotations

import pytest

from app.replies import split_reply, twiml, xml_safe
from app.webhook_client import twiml_messages
from tests.support.app_harness import AppHarness, form, post_signed, replies

FORBIDDEN_IN_XML = "".join(chr(c) for c in range(0x20) if chr(c) not in "\t\n\r") + "\ufffe\uffff"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("short", ["short"]),
        ("", []),
        ("a" * 3300, ["a" * 1600, "a" * 1600, "a" * 100]),  # one long word is cut
        ("x" * 1000 + "\n" + "y" * 1000, ["x" * 1000, "y" * 1000]),  # at the line break
    ],
)
def test_split_reply(text: str, expected: list[str]) -> None:
    assert split_reply(text) == expected


def test_twiml_drops_what_xml_cannot_hold_and_keeps_the_rest() -> None:
    text = f"a{FORBIDDEN_IN_XML}b\tc\nd é 👍 <&>"

    document = twiml(text, "second")

    assert twiml_messages(document) == ["ab\tc\nd é 👍 <&>", "second"]
    assert xml_safe(FORBIDDEN_IN_XML) == ""


def test_a_reply_that_is_only_control_characters_sends_no_empty_message() -> None:
    assert twiml_messages(twiml("\x07\x00")) == []


def test_an_echoed_bel_and_nul_never_make_the_twiml_unparseable(harness: AppHarness) -> None:
    client = harness.app().test_client()  # the offline model echoes what it was sent

    response = post_signed(client, form("ring\x07 the bell\x00 now\x1b[0m"))

    assert replies(response) == [  # a strict parse of the TwiML, as Twilio does
        "[offline model] You said: “ring the bell now[0m”. I remember 0 earlier messages."
    ]
    [stored] = [row for row in harness.rows() if row["role"] == "user"]
    assert "\x07" in stored["content"]  # the message itself is stored as it came
