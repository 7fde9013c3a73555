"""Logs never carry message text, whatever fails: each failure path is forced on the real
servers with a recognisable body, and every record the app, the library, Flask and RQ logged is
rendered with both of the app's formatters (text and JSON) and searched for it.

The failures: Postgres killing the connection in the middle of the inbound message's INSERT
(SQLAlchemy's error quotes the statement's parameters) and of the turn's write; a CHECK
constraint refusing the row (Postgres quotes the whole row in its DETAIL); a model whose error
quotes its input; and, in the async mode, a Twilio error that quotes the reply, failing the RQ
job (RQ logs and stores the job's traceback text).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from rq.job import Job

from app.conversations import Address
from app.observability import JSONLogFormatter, KeyValueLogFormatter
from app.worker import run_worker
from tests.support.app_harness import AppHarness, fake_model, form, post_signed, replies

SECRET = "TOPSECRET-BODY-4242 my card number"
# Rows whose content holds this die mid-INSERT (the trigger below); this one breaks a CHECK.
KILL_MARK = "KILL-THIS-INSERT"
CHECK_MARK = "REFUSED-BY-A-CHECK"

FAULTS_SQL = f"""
CREATE FUNCTION die_on_marked_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.content LIKE '%{KILL_MARK}%' THEN
    PERFORM pg_terminate_backend(pg_backend_pid());
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER die_on_marked_rows BEFORE INSERT ON messages
  FOR EACH ROW EXECUTE FUNCTION die_on_marked_rows();
ALTER TABLE messages ADD CONSTRAINT no_marked_rows CHECK (content NOT LIKE '%{CHECK_MARK}%');
CREATE FUNCTION refuse_marked_names() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.profile_name LIKE '%TOPSECRET%' THEN RAISE EXCEPTION 'refused'; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_marked_names BEFORE INSERT ON conversations
  FOR EACH ROW EXECUTE FUNCTION refuse_marked_names();
"""


@pytest.fixture
def faulty(harness: AppHarness) -> AppHarness:
    """The harness, its database rigged to fail on marked rows."""
    with harness.engine.begin() as conn:
        conn.execute(sa.text(FAULTS_SQL))
    return harness


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logs() -> Iterator[list[logging.LogRecord]]:
    """Every record logged during the test, whatever its logger, from DEBUG up."""
    root, recorder = logging.getLogger(), Recorder()
    level = root.level
    root.addHandler(recorder)
    root.setLevel(logging.DEBUG)
    try:
        yield recorder.records
    finally:
        root.removeHandler(recorder)
        root.setLevel(level)


def rendered(records: list[logging.LogRecord]) -> list[str]:
    """Each record as the app's two formatters write it."""
    text, json_format = KeyValueLogFormatter(), JSONLogFormatter()
    out = []
    for record in records:
        out += [text.format(record), json_format.format(record)]
        json.loads(out[-1])  # one JSON object per line
    return out


def assert_never_logged(records: list[logging.LogRecord], *secrets: str) -> None:
    assert records, "the failure logged nothing at all"
    for line in rendered(records):
        for secret in secrets:
            assert secret not in line, line


def exceptions_logged(records: list[logging.LogRecord]) -> list[str]:
    return [type(r.exc_info[1]).__name__ for r in records if r.exc_info and r.exc_info[1]]


def test_postgres_dying_mid_insert_of_the_inbound_message(
    faulty: AppHarness, logs: list[logging.LogRecord]
) -> None:
    body = f"{SECRET} {KILL_MARK}"
    response = post_signed(faulty.app(fake_model()).test_client(), form(body))

    assert response.status_code == 503
    assert "StoreUnavailableError" in exceptions_logged(logs)  # chained to SQLAlchemy's error
    assert_never_logged(logs, SECRET)


def test_a_row_refused_by_postgres_which_quotes_it(
    faulty: AppHarness, logs: list[logging.LogRecord]
) -> None:
    app = faulty.app(fake_model())
    body = f"{SECRET} {CHECK_MARK}"
    response = post_signed(app.test_client(), form(body))

    # Refused for good (no retry can pass the constraint): a client error, nothing stored.
    assert response.status_code == 400
    assert exceptions_logged(logs)  # the refusal was logged, with its traceback
    assert_never_logged(logs, SECRET)


def test_postgres_dying_mid_write_of_the_turn(
    faulty: AppHarness, logs: list[logging.LogRecord]
) -> None:
    answer = f"Your card number is {SECRET} {KILL_MARK}"
    client = faulty.app(fake_model(answer)).test_client()

    assert replies(post_signed(client, form(SECRET))) == [faulty.settings.apology_text]
    assert "StoreUnavailableError" in exceptions_logged(logs)
    assert_never_logged(logs, SECRET)


class EchoingFailureModel(FakeListChatModel):
    """A provider whose error message quotes the prompt (content filters do)."""

    def bind_tools(self, tools: object, **kwargs: object) -> EchoingFailureModel:
        return self

    def _call(self, messages: list, *args: object, **kwargs: object) -> str:
        raise ValueError(f"content policy violation in: {messages[-1].content!r}")


def test_a_model_error_that_quotes_the_message(
    harness: AppHarness, logs: list[logging.LogRecord]
) -> None:
    client = harness.app(EchoingFailureModel(responses=["unused"])).test_client()

    assert replies(post_signed(client, form(SECRET))) == [harness.settings.apology_text]
    assert "ValueError" in exceptions_logged(logs)
    assert_never_logged(logs, SECRET)


def test_an_rq_job_failing_on_a_twilio_error_that_quotes_the_reply(
    harness: AppHarness, logs: list[logging.LogRecord]
) -> None:
    answer = f"Noted: {SECRET}"
    app = harness.app(fake_model(answer), reply_mode="async", job_retry_intervals=())
    harness.http.status = 500
    harness.http.error_message = f"upstream refused the body {answer!r}"

    post_signed(app.test_client(), form("remember my card"))
    run_worker(app.extensions["hybrid_memory"], burst=True, with_scheduler=False)

    queue = app.extensions["hybrid_memory"].queue
    [failed] = queue.failed_job_registry.get_job_ids()
    result = Job.fetch(failed, connection=harness.redis).latest_result()
    stored = (result.exc_string if result is not None else None) or ""
    assert "TwilioRestException" in stored  # RQ keeps the failure, without its message
    assert SECRET not in stored
    assert "TwilioRestException" in exceptions_logged(logs)
    assert_never_logged(logs, SECRET)


def test_the_apps_engines_hide_sql_parameters(harness: AppHarness) -> None:
    with harness.engine.begin() as conn:
        conn.execute(sa.text(FAULTS_SQL))
    services = harness.app().extensions["hybrid_memory"]

    with pytest.raises(sa.exc.DBAPIError) as refused:
        services.conversations.resolve(
            Address("sms", "+15550001111"),
            Address("sms", "+15550002222"),
            profile_name=SECRET,
        )

    assert "refused" in str(refused.value)
    assert SECRET not in str(refused.value)
