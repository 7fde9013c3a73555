"""The operator console through Flask's test client, on real Redis and Postgres: credentials,
CSRF, listing with search and paging, the transcript's window marks, search, erasure, figures.
(The same pages in a real browser: ``test_console_browser.py``.)"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from langchain_core.messages import HumanMessage

from app.console_auth import DEV_CONSOLE_TOKEN_FILE, console_credential
from app.settings import Settings
from tests.support import app_harness as app_support
from tests.support.app_harness import AppHarness, fake_model, form, post_signed, replies
from tests.support.console_data import CONSOLE_TOKEN, seed_conversation

harness = app_support.harness  # the fixture, under its name in this module
BEARER = {"Authorization": f"Bearer {CONSOLE_TOKEN}"}


@pytest.fixture
def console_app(harness: AppHarness) -> Flask:
    return harness.app(fake_model("console reply"), console_token=CONSOLE_TOKEN)


def signed_in(app: Flask) -> FlaskClient:
    client = app.test_client()
    page = client.get("/console/login").get_data(as_text=True)
    response = client.post(
        "/console/login",
        data={"token": CONSOLE_TOKEN, "csrf_token": _csrf(page), "next": "/console/"},
    )
    assert response.status_code == 302 and response.headers["Location"] == "/console/"
    return client


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field in the page"
    return match.group(1)


def test_the_console_is_off_without_a_token(harness: AppHarness) -> None:
    app = harness.app(fake_model())
    response = app.test_client().get("/console/")
    assert response.status_code == 404
    assert "set CONSOLE_TOKEN" in response.get_data(as_text=True)
    assert app.test_client().get("/console/api/live").status_code == 404


def test_dev_token_only_on_the_embedded_servers(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert console_credential(settings, embedded=False) is None
    first = console_credential(settings, embedded=True)
    again = console_credential(settings, embedded=True)
    assert first is not None and first.dev and again == first  # one token, kept in the data dir
    assert (tmp_path / DEV_CONSOLE_TOKEN_FILE).stat().st_mode & 0o777 == 0o600
    configured = console_credential(Settings(console_token="set", data_dir=tmp_path), embedded=True)
    assert configured is not None and configured.token == "set" and not configured.dev


def test_requests_without_credentials_get_401(harness: AppHarness, console_app: Flask) -> None:
    conversation = seed_conversation(harness, "+15550003333", 2)
    client = console_app.test_client()
    for path in ("/console/", f"/console/conversations/{conversation}", "/console/api/live"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert "Bearer" in response.headers["WWW-Authenticate"]
    html = client.get("/console/", headers={"Accept": "text/html"})
    assert html.status_code == 401 and "Console token" in html.get_data(as_text=True)
    assert client.get("/console/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    erase = client.post(f"/console/conversations/{conversation}/erase", data={"csrf_token": "x"})
    assert erase.status_code == 401
    assert harness.memory.count(conversation) == 4  # nothing erased


def test_bearer_and_basic_credentials(console_app: Flask) -> None:
    client = console_app.test_client()
    assert client.get("/console/api/live", headers=BEARER).status_code == 200
    basic = base64.b64encode(f"operator:{CONSOLE_TOKEN}".encode()).decode()
    assert client.get("/console/", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    wrong = base64.b64encode(b"operator:nope").decode()
    assert client.get("/console/", headers={"Authorization": f"Basic {wrong}"}).status_code == 401


def test_sign_in_form_checks_the_token_and_its_csrf_field(console_app: Flask) -> None:
    client = console_app.test_client()
    page = client.get("/console/login").get_data(as_text=True)
    no_csrf = client.post("/console/login", data={"token": CONSOLE_TOKEN})
    assert no_csrf.status_code == 403
    wrong = client.post("/console/login", data={"token": "guess", "csrf_token": _csrf(page)})
    assert wrong.status_code == 401 and "not the console token" in wrong.get_data(as_text=True)
    assert client.get("/console/", headers={"Accept": "text/html"}).status_code == 401
    off_site = client.post(
        "/console/login",
        data={"token": CONSOLE_TOKEN, "csrf_token": _csrf(page), "next": "//evil.example/"},
    )
    assert off_site.headers["Location"] == "/console/"  # never redirected off the console
    index = client.get("/console/")
    assert index.status_code == 200
    assert index.headers["X-Frame-Options"] == "DENY"
    assert "script-src 'self'" in index.headers["Content-Security-Policy"]


def test_list_pages_and_search(harness: AppHarness, console_app: Flask) -> None:
    ids = [seed_conversation(harness, f"+1555000100{i}", 1) for i in range(5)]
    named = seed_conversation(harness, "+15550009999", 1, channel="whatsapp", profile_name="Ada")
    client = signed_in(console_app)

    seen: list[str] = []
    url = "/console/?per_page=2"
    while url:
        page = client.get(url).get_data(as_text=True)
        seen += re.findall(r'<tr class="conversation" data-id="([0-9a-f]+)"', page)
        link = re.search(r'id="older-conversations" href="([^"]+)"', page)
        url = link.group(1).replace("&amp;", "&") if link else ""
    assert seen == [named, *reversed(ids)]  # most recently active first, each once

    found = client.get("/console/?q=0001003").get_data(as_text=True)
    assert re.findall(r'data-id="([0-9a-f]+)"', found) == [ids[3]]
    by_name = client.get("/console/?q=ada").get_data(as_text=True)
    assert re.findall(r'data-id="([0-9a-f]+)"', by_name) == [named]
    assert "whatsapp" in by_name
    wildcard = client.get("/console/?q=%25").get_data(as_text=True)  # "%" is no wildcard
    assert "No conversation matches" in wildcard
    assert client.get("/console/?before=garbage").status_code == 400


def test_transcript_marks_the_redis_window_and_shows_tool_calls_and_delivery(
    harness: AppHarness, console_app: Flask
) -> None:
    conversation = seed_conversation(harness, "+15550004444", 30, with_tool_call=True)
    entries = harness.memory.transcript(conversation)
    reply = entries[-1]
    assert harness.memory.mark_delivered(conversation, reply.message_id, "SM" + "f" * 32)
    harness.memory.get_messages(conversation)  # a read fills the Redis window (50 entries)
    client = signed_in(console_app)

    page = client.get(f"/console/conversations/{conversation}").get_data(as_text=True)
    marks = re.findall(r'class="message role-\w+ (in-window|postgres-only)"', page)
    assert len(marks) == 62 == len(entries)
    assert marks == ["postgres-only"] * 12 + ["in-window"] * 50
    state = harness.memory.cache_state(conversation)
    assert state is not None
    cached_rows = re.findall(r'in-window" data-row-id="(\d+)"', page)
    assert [int(r) for r in cached_rows] == state.row_ids
    assert re.search(r'TTL <span id="ttl">(\d+)</span> s', page)
    assert "→ current_time({&#39;zone&#39;: &#39;UTC&#39;})" in page
    assert f"Twilio: sent · SM{'f' * 32}" in page
    assert "Twilio: received · SM" in page

    harness.memory.cache.invalidate(conversation)  # Redis forgot it: everything Postgres-only
    page = client.get(f"/console/conversations/{conversation}").get_data(as_text=True)
    assert "in-window" not in re.sub(r'<span class="mark in-window">', "", page)
    assert "not cached" in page


def test_transcript_pages_backwards(harness: AppHarness, console_app: Flask) -> None:
    conversation = seed_conversation(harness, "+15550004455", 60)  # 120 messages, pages of 100
    client = signed_in(console_app)
    first = client.get(f"/console/conversations/{conversation}").get_data(as_text=True)
    rows = [int(r) for r in re.findall(r'data-row-id="(\d+)"', first)]
    older = re.search(r'id="older-messages" href="([^"]+)"', first)
    assert len(rows) == 100 and older
    second = client.get(older.group(1).replace("&amp;", "&")).get_data(as_text=True)
    earlier = [int(r) for r in re.findall(r'data-row-id="(\d+)"', second)]
    all_rows = [e.row_id for e in harness.memory.transcript(conversation)]
    assert earlier + rows == all_rows  # the page before starts right where the first ends
    assert 'id="older-messages"' not in second


def test_search_box_finds_older_messages_and_escapes_them(
    harness: AppHarness, console_app: Flask
) -> None:
    conversation = seed_conversation(harness, "+15550005555", 12)
    harness.memory.add_messages(conversation, [HumanMessage("<script>x()</script>")])
    client = signed_in(console_app)
    page = client.get(f"/console/conversations/{conversation}?q=question 1 ")
    html = page.get_data(as_text=True)
    results = re.search(r'<ol class="found" id="search-results">(.*?)</ol>', html, re.S)
    assert results
    assert "question 11 from" in results.group(1) and "question 10 from" in results.group(1)
    assert "question 2 from" not in results.group(1)
    assert "<script>x()" not in html and "&lt;script&gt;x()" in html


def test_erase_needs_its_csrf_token_then_removes_everything(
    harness: AppHarness, console_app: Flask
) -> None:
    web = console_app.test_client()
    assert replies(post_signed(web, form("remember me"))) == ["console reply"]
    [row] = harness.rows("conversations")
    conversation = row["id"]
    redis = harness.redis
    assert list(redis.scan_iter(match=f"*{{{conversation}}}*"))  # turn state exists
    harness.memory.get_messages(conversation)  # and a cached window
    client = signed_in(console_app)
    confirm = client.get(f"/console/conversations/{conversation}/erase").get_data(as_text=True)
    assert "Erase this conversation?" in confirm and "2 messages" in confirm

    forged = client.post(f"/console/conversations/{conversation}/erase", data={})
    assert forged.status_code == 403
    assert harness.memory.count(conversation) == 2  # a POST without the form token erases nothing

    done = client.post(
        f"/console/conversations/{conversation}/erase", data={"csrf_token": _csrf(confirm)}
    )
    assert done.status_code == 302 and done.headers["Location"] == "/console/"
    listing = client.get("/console/").get_data(as_text=True)
    assert f"Conversation {conversation} erased: 2 messages" in listing
    assert f'data-id="{conversation}"' not in listing
    assert harness.memory.count(conversation) == 0
    assert harness.rows("conversations") == []
    assert harness.memory.cache_state(conversation) is None
    assert list(redis.scan_iter(match=f"*{{{conversation}}}*")) == []
    gone = client.get(f"/console/conversations/{conversation}")
    assert gone.status_code == 404 and "it was erased" in gone.get_data(as_text=True)

    # The contact writes again: a new, empty conversation, not the erased one.
    assert replies(post_signed(web, form("hello again"))) == ["console reply"]
    [again] = harness.rows("conversations")
    assert again["id"] != conversation and harness.memory.count(again["id"]) == 2


def test_live_figures(harness: AppHarness, console_app: Flask) -> None:
    web = console_app.test_client()
    before = web.get("/console/api/live", headers=BEARER).get_json()
    replies(post_signed(web, form("one")))
    after = web.get("/console/api/live", headers=BEARER).get_json()
    assert after["webhook"]["requests"] == before["webhook"]["requests"] + 1
    assert after["webhook"]["p95_ms"] is not None
    assert after["breaker"]["state"] == "closed"
    assert after["queue_depth"] == 0
    reads = after["memory"]["hits"] + after["memory"]["misses"]
    assert reads > before["memory"]["hits"] + before["memory"]["misses"]


def test_erase_waits_for_a_running_turn_and_refuses_when_it_does_not_end(
    harness: AppHarness, console_app: Flask
) -> None:
    from app.erasure import ErasureError, erase_conversation

    conversation = seed_conversation(harness, "+15550006666", 1)
    services = console_app.extensions["hybrid_memory"]
    turn_lock = services.redis.lock(services.turns.lock_key(conversation), timeout=30)
    assert turn_lock.acquire(blocking=False)  # a turn of this conversation is running
    try:
        with pytest.raises(ErasureError, match="still running"):
            erase_conversation(services, conversation, wait_seconds=0.2)
        assert harness.memory.count(conversation) == 2  # nothing erased meanwhile
    finally:
        turn_lock.release()
    erasure = erase_conversation(services, conversation)
    assert erasure.messages == 2 and erasure.conversation_row
    assert erase_conversation(services, conversation).found is False  # erasing again: a no-op
