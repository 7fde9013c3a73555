"""Bad input and abuse of ``POST /twilio/messages``, driven by hypothesis, on real Redis and
Postgres (issue 6).

Every example is a raw HTTP request: a urlencoded body built byte by byte (so invalid UTF-8,
repeated keys and broken percent-escapes reach the app as Twilio's HTTP client never would),
signed the way Twilio signs, or forged, replayed with a changed body, sent with the wrong method
or content type. The invariants, checked against the tables after every request:

* never a 5xx (Twilio would retry it, then fail over to the fallback URL);
* a 4xx writes nothing: no ``messages`` row, no ``conversations`` row, no turn queued in Redis;
* a 2xx writes at most the inbound row of its MessageSid (async mode) or that row and its own
  answer ``<MessageSid>:<n>`` (inline mode), nothing for any other MessageSid (no partial or
  stray writes);
* the per-sender rate limit holds, and only signed requests spend the budget.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from tests.support.app_harness import (
    AUTH_TOKEN,
    WEBHOOK,
    AppHarness,
    fake_model,
    form,
    new_sid,
    signature,
)

FORM = "application/x-www-form-urlencoded"
FUZZ = settings(
    max_examples=100,
    deadline=None,
    # One app (and database) per test, shared by its examples: each example's writes are
    # measured as differences, so examples need no isolation from each other.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- what a fuzzed field may hold -----------------------------------------------------------------

LOOKALIKES = [
    "'; DROP TABLE messages;--",
    "' OR '1'='1",
    "\\'; DELETE FROM conversations; --",
    "$$; TRUNCATE messages; $$",
    "*3\r\n$3\r\nDEL\r\n$8\r\nmessages\r\n",
    "*1\r\n$8\r\nFLUSHALL\r\n",
    "EVAL \"return redis.call('FLUSHALL')\" 0",
    "{hash}tag}{",
    "hm:lock:{x}",
    "%00%FF%FE",
    "%ZZ%",
    "&Body=injected&",
    "whatsapp:",
    ":",
    "<Response><Message>pwned</Message></Response>",
    "]]><![CDATA[",
    "${jndi:ldap://127.0.0.1/a}",
    "\u202etxet\u202c",
    "\ufeff\u200b",
    "👍🏽" * 50,
]
control_text = st.text(alphabet=st.characters(max_codepoint=0x1F) | st.sampled_from("\x7f\x85"))
values = st.one_of(
    st.just(""),
    st.text(max_size=40),
    control_text,
    st.sampled_from(LOOKALIKES),
    st.integers(min_value=1, max_value=70_000).map(lambda n: "x" * n),  # huge, both sides of caps
    st.text(min_size=1600, max_size=1700),
)
# Raw bytes inside the urlencoded body: invalid UTF-8 on the wire, escaped or not.
raw_values = st.one_of(
    values.map(lambda v: urllib.parse.quote_plus(v).encode()),
    st.binary(max_size=30),
    st.binary(max_size=30).map(lambda b: urllib.parse.quote_from_bytes(b).encode()),
)
FIELDS = ["Body", "From", "To", "MessageSid", "AccountSid", "NumMedia", "ProfileName"]
FIELDS += ["MessagingServiceSid", "MediaUrl0", "MediaContentType0", "SmsSid", "WaId"]
field_names = st.sampled_from(FIELDS) | st.text(max_size=12)  # unknown fields too


@st.composite
def webhook_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    """A urlencoded body: a valid Twilio form with some fields changed, dropped, repeated or
    added (as text or as raw bytes); and the MessageSid it was built around."""
    sid = new_sid()
    fields = form(draw(st.sampled_from(["hello", "what is my name?", *LOOKALIKES])), sid=sid)
    if draw(st.booleans()):  # media-only
        fields.update(Body="", NumMedia="1", MediaUrl0="https://api.twilio.com/media/ME1")
    pairs = [(k.encode(), urllib.parse.quote_plus(v).encode()) for k, v in fields.items()]
    for _ in range(draw(st.integers(0, 4))):
        name = urllib.parse.quote_plus(draw(field_names)).encode()
        value = draw(raw_values)
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        if action != "add":
            pairs = [p for p in pairs if p[0] != name]
        if action != "drop":
            pairs.append((name, value))
    order = draw(st.permutations(range(len(pairs))))
    return b"&".join(pairs[i][0] + b"=" + pairs[i][1] for i in order), sid


def parsed_form(raw: bytes, content_type: str = FORM) -> Any:
    """The form exactly as the app will parse it (what a correct signature covers)."""
    environ = EnvironBuilder(
        path=WEBHOOK, method="POST", data=raw, content_type=content_type
    ).get_environ()
    return Request(environ).form


def sign(raw: bytes, content_type: str = FORM) -> str:
    return signature(parsed_form(raw, content_type))


# -- the state the invariants are checked against ---------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    message_uids: frozenset[str]
    conversations: int
    turn_keys: frozenset[str]


class Ledger:
    """Everything a webhook may write: the tables and the app's turn keys in Redis."""

    def __init__(self, harness: AppHarness) -> None:
        self.harness = harness

    def snapshot(self) -> Snapshot:
        with self.harness.engine.connect() as conn:
            uids = conn.execute(sa.text("SELECT message_uid FROM messages")).scalars().all()
            conversations = conn.execute(sa.text("SELECT count(*) FROM conversations")).scalar()
        pattern = f"{self.harness.settings.redis_prefix}turn:*"
        keys = {k.decode() for k in self.harness.redis.scan_iter(match=pattern, count=1000)}
        return Snapshot(frozenset(uids), int(conversations or 0), frozenset(keys))

    def check(self, before: Snapshot, status: int, sid: str, *, inline: bool) -> None:
        after = self.snapshot()
        new_uids = after.message_uids - before.message_uids
        new_turns = after.turn_keys - before.turn_keys
        assert status < 500, status
        if status >= 300:
            assert new_uids == set(), (status, new_uids)
            assert after.conversations == before.conversations, status
            assert new_turns == set(), (status, new_turns)
            return
        if not new_uids:
            assert after.conversations == before.conversations  # nothing stored, nothing begun
            return
        assert sid in new_uids, (sid, new_uids)  # only the request's own MessageSid...
        answers = new_uids - {sid}
        if inline:  # ...and, answered inline, its own answer rows
            assert all(uid.startswith(f"{sid}:") for uid in answers), answers
        else:
            assert answers == set(), answers
        assert after.conversations - before.conversations in (0, 1)
        assert all(key.endswith(f":{sid}") for key in new_turns), new_turns


@pytest.fixture(params=["async", "inline"])
def fuzz_app(request: pytest.FixtureRequest, harness: AppHarness) -> Iterator[Flask]:
    model = fake_model(*[f"answer {i}" for i in range(500)])
    yield harness.app(model, reply_mode=request.param, rate_limit="")


def post_raw(
    client: FlaskClient, raw: bytes, headers: dict[str, str], content_type: str = FORM
) -> int:
    return client.post(WEBHOOK, data=raw, content_type=content_type, headers=headers).status_code


# -- the fuzz tests -----------------------------------------------------------------------------


@FUZZ
@given(request=webhook_bodies())
def test_signed_fuzzed_webhooks_never_5xx_and_never_write_partially(
    harness: AppHarness, fuzz_app: Flask, request: tuple[bytes, str]
) -> None:
    check_signed_request(harness, fuzz_app, request)


@pytest.mark.slow
@settings(FUZZ, max_examples=2000)
@given(request=webhook_bodies())
def test_signed_fuzzed_webhooks_long_run(
    harness: AppHarness, fuzz_app: Flask, request: tuple[bytes, str]
) -> None:
    check_signed_request(harness, fuzz_app, request)


def check_signed_request(harness: AppHarness, app: Flask, request: tuple[bytes, str]) -> None:
    raw, sid = request
    client = app.test_client()
    ledger = Ledger(harness)
    inline = app.extensions["hybrid_memory"].settings.reply_mode == "inline"

    before = ledger.snapshot()
    status = post_raw(client, raw, {"X-Twilio-Signature": sign(raw)})
    event(f"HTTP {status}")
    ledger.check(before, status, sid, inline=inline)

    # The same request again (a Twilio retry): never a second row, never a 5xx.
    before = ledger.snapshot()
    retry = post_raw(client, raw, {"X-Twilio-Signature": sign(raw)})
    ledger.check(before, retry, sid, inline=inline)
    assert not (ledger.snapshot().message_uids - before.message_uids)


@dataclass(frozen=True)
class Abuse:
    kind: str
    method: str
    path: str
    body: bytes
    headers: dict[str, str]
    content_type: str
    expected: int


@st.composite
def abusive_requests(draw: st.DrawFn) -> Abuse:
    """A forged, unsigned, replayed, wrong-method or wrong-content-type request."""
    fields = form(draw(st.sampled_from(["hi", *LOOKALIKES])), sid=new_sid())
    raw = urllib.parse.urlencode(fields).encode()
    good = {"X-Twilio-Signature": signature(fields)}
    kind = draw(
        st.sampled_from(
            [
                "missing",
                "empty",
                "garbage",
                "wrong-token",
                "wrong-url",
                "replayed-changed-body",
                "replayed-extra-field",
                "replayed-dropped-field",
                "unsigned-query",
                "method",
                "json",
                "multipart",
                "text",
            ]
        )
    )

    def abuse(headers: dict[str, str], expected: int, **changes: Any) -> Abuse:
        base = Abuse(kind, "POST", WEBHOOK, raw, headers, FORM, expected)
        return replace(base, **changes)

    if kind == "missing":
        return abuse({}, 403)
    if kind == "empty":
        return abuse({"X-Twilio-Signature": ""}, 403)
    if kind == "garbage":
        garbage = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60)
        return abuse({"X-Twilio-Signature": draw(garbage)}, 403)
    if kind == "wrong-token":
        token = draw(st.text(min_size=1, max_size=40).filter(lambda t: t != AUTH_TOKEN))
        return abuse({"X-Twilio-Signature": signature(fields, token=token)}, 403)
    if kind == "wrong-url":
        url = "https://evil.example.com" + WEBHOOK
        return abuse({"X-Twilio-Signature": signature(fields, url=url)}, 403)
    if kind.startswith("replayed"):
        # A captured (valid) signature replayed over another body.
        changed = dict(fields)
        if kind == "replayed-changed-body":
            changed["Body"] = fields["Body"] + draw(st.text(min_size=1, max_size=20))
        elif kind == "replayed-extra-field":
            changed[draw(st.sampled_from(["Extra", "Body2", "NumMedia0"]))] = "1"
        else:
            del changed[draw(st.sampled_from(["Body", "NumMedia", "SmsSid", "ToCountry"]))]
        return abuse(good, 403, body=urllib.parse.urlencode(changed).encode())
    if kind == "unsigned-query":  # a query string the signature did not cover
        return abuse(good, 403, path=WEBHOOK + "?" + urllib.parse.urlencode({"x": draw(values)}))
    if kind == "method":
        return abuse(good, 405, method=draw(st.sampled_from(["GET", "PUT", "DELETE", "PATCH"])))
    if kind == "json":
        body = json.dumps(fields).encode()
        signed_empty = {"X-Twilio-Signature": signature({})}
        return abuse(signed_empty, 415, body=body, content_type="application/json")
    if kind == "multipart":
        # Werkzeug parses multipart into request.form, so the signature matches: 415 then.
        boundary = "fuzzboundary"
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
            for k, v in fields.items()
        ]
        body = ("".join(parts) + f"--{boundary}--\r\n").encode()
        content_type = f"multipart/form-data; boundary={boundary}"
        headers = {"X-Twilio-Signature": sign(body, content_type)}
        return abuse(headers, 415, body=body, content_type=content_type)
    # text/plain: request.form is empty, so a signature over {} passes; the type does not.
    return abuse({"X-Twilio-Signature": signature({})}, 415, content_type="text/plain")


@FUZZ
@given(abuse=abusive_requests())
def test_forged_replayed_and_wrong_kind_requests_are_4xx_and_write_nothing(
    harness: AppHarness, fuzz_app: Flask, abuse: Abuse
) -> None:
    client = fuzz_app.test_client()
    ledger = Ledger(harness)
    before = ledger.snapshot()

    response = client.open(
        abuse.path,
        method=abuse.method,
        data=abuse.body,
        content_type=abuse.content_type,
        headers=abuse.headers,
    )

    assert response.status_code == abuse.expected, (abuse.kind, response.status_code)
    ledger.check(before, response.status_code, "", inline=False)


# -- the rate limit -------------------------------------------------------------------------------

LIMIT = 3
KINDS = ["valid", "duplicate", "invalid-signed", "forged", "replayed", "unsigned"]


@pytest.fixture
def limited_app(harness: AppHarness) -> Flask:
    return harness.app(fake_model("ok"), reply_mode="async", rate_limit=f"{LIMIT} per minute")


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=10), data=st.data())
def test_rate_limit_holds_and_only_signed_requests_spend_the_budget(
    harness: AppHarness, limited_app: Flask, kinds: list[str], data: st.DataObject
) -> None:
    client = limited_app.test_client()
    ledger = Ledger(harness)
    sender = "+1555" + str(data.draw(st.integers(10**6, 10**7 - 1), label="sender"))
    sender += new_sid()[-6:]  # a fresh budget per example, whatever hypothesis draws
    spent = 0
    last_valid: dict[str, str] | None = None
    for kind in kinds:
        fields = form("hello", sender=sender)
        headers = {"X-Twilio-Signature": signature(fields)}
        if kind == "duplicate" and last_valid is not None:
            fields = last_valid
            headers = {"X-Twilio-Signature": signature(fields)}
        elif kind == "invalid-signed":
            fields = form("hello", sender=sender, sid="SM-not-a-sid")
            headers = {"X-Twilio-Signature": signature(fields)}
        elif kind == "forged":
            headers = {"X-Twilio-Signature": signature(fields, token="not-the-token")}
        elif kind == "replayed":
            headers = {"X-Twilio-Signature": signature(form("other", sender=sender))}
        elif kind == "unsigned":
            headers = {}
        signed = kind in ("valid", "duplicate", "invalid-signed")
        if signed:
            spent += 1
        before = ledger.snapshot()
        status = client.post(WEBHOOK, data=fields, headers=headers).status_code
        ledger.check(before, status, fields["MessageSid"], inline=False)
        if not signed:
            expected = 403
        elif spent > LIMIT:
            expected = 429  # over the budget, whatever the request
        elif kind == "invalid-signed":
            expected = 400
        else:
            expected = 200
        assert status == expected, (kinds, kind, status)
        if kind == "valid" and status == 200:
            last_valid = fields


def test_the_parsed_form_is_what_werkzeug_makes_of_invalid_utf8() -> None:
    """What the signature of a fuzzed body is computed over: escaped invalid UTF-8 stays text,
    raw invalid UTF-8 drops the whole form (so such a request is signed over ``{}``)."""
    assert parsed_form(b"Body=%FF%FE")["Body"] == "%FF%FE"
    assert parsed_form(b"Body=\xff&From=x") == {}


# -- what the fuzzing found (regressions) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ({"From": "+1" + "5" * 3000}, 400),  # did not fit the conversations index: was a 503
        ({"To": "+1555\x000002222"}, 400),  # NUL: Postgres text cannot hold it, was a 500
        ({"From": "whatsapp:"}, 400),  # no number to reply to
        ({"From": "+1555\r\n0001111"}, 400),
        ({"MessagingServiceSid": "'; DROP TABLE messages;--"}, 400),  # replies would go nowhere
        ({"AccountSid": "AC\x00"}, 403),  # not ours (checked first)
    ],
    ids=["huge-from", "nul-to", "empty-number", "crlf-from", "bad-service-sid", "nul-account"],
)
def test_malformed_addresses_and_sids_are_a_400_not_a_5xx(
    harness: AppHarness, extra: dict[str, str], status: int
) -> None:
    client = harness.app(fake_model("ok")).test_client()
    fields = {**form("hello"), **extra}

    response = client.post(WEBHOOK, data=fields, headers={"X-Twilio-Signature": signature(fields)})

    assert response.status_code == status
    assert harness.rows() == [] and harness.rows("conversations") == []


def test_a_display_name_with_control_characters_is_cleaned_not_refused(
    harness: AppHarness,
) -> None:
    client = harness.app(fake_model("ok")).test_client()
    fields = form("hello", ProfileName="Ada\x00\x1b[31m" + "x" * 500)

    response = client.post(WEBHOOK, data=fields, headers={"X-Twilio-Signature": signature(fields)})

    assert response.status_code == 200
    [conversation] = harness.rows("conversations")
    assert conversation["profile_name"] == ("Ada[31m" + "x" * 500)[:256]
