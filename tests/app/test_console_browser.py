"""The console in a real headless Chromium (Playwright's Python API driving the system's
``chromium``), against the app served over HTTP on real Redis and Postgres: sign in, list,
page, search, open a transcript, see the window marks, watch the live chart, erase.

Screenshots go to the test's temporary directory, and also to ``$CONSOLE_SCREENSHOTS`` when set.
Skipped, saying why, only where no browser can be found (``.ci/run`` installs one).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server

from tests.support.app_harness import (
    PUBLIC_BASE_URL,
    WEBHOOK,
    AppHarness,
    fake_model,
    form,
    signature,
)
from tests.support.console_data import CONSOLE_TOKEN, seed_conversation


def _chromium() -> str:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser"):
        path = candidate and shutil.which(candidate)
        if path:
            return path
    pytest.skip("no Chromium on this machine (apt-get install chromium; .ci/run does it)")


@pytest.fixture
def browser() -> Iterator[Any]:
    executable = _chromium()
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="playwright is not installed (make venv installs it)",
    )
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        yield launched
        launched.close()


@pytest.fixture
def served(harness: AppHarness) -> Iterator[str]:
    """The app with a console token, served by werkzeug over HTTP; its base URL."""
    app = harness.app(fake_model("browser reply"), console_token=CONSOLE_TOKEN)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        thread.join(5)


def _post_webhook(base: str, body: str) -> None:
    """A signed Twilio webhook over HTTP (signed for the public URL the app is configured with)."""
    fields = form(body)
    response = requests.post(
        base + WEBHOOK,
        data=fields,
        headers={"X-Twilio-Signature": signature(fields, PUBLIC_BASE_URL + WEBHOOK)},
        timeout=30,
    )
    assert response.status_code == 200, response.text


class Screenshots:
    def __init__(self, page: Any, directory: Path) -> None:
        self.page = page
        self.directories = [directory]
        extra = os.environ.get("CONSOLE_SCREENSHOTS")
        if extra:
            self.directories.append(Path(extra))
        for folder in self.directories:
            folder.mkdir(parents=True, exist_ok=True)
        self.taken: list[Path] = []

    def take(self, name: str, *, full_page: bool = False) -> None:
        for folder in self.directories:
            path = folder / f"{name}.png"
            self.page.screenshot(path=str(path), full_page=full_page)
            self.taken.append(path)


def test_console_in_a_real_browser(
    browser: Any, served: str, harness: AppHarness, tmp_path: Path
) -> None:
    long_id = seed_conversation(harness, "+15550007777", 30, with_tool_call=True)  # 62 messages
    others = [seed_conversation(harness, f"+1555000200{i}", 2) for i in range(3)]
    _post_webhook(served, "hello from the browser test")  # one through the real webhook path
    harness.memory.get_messages(long_id)  # a read fills its Redis window: the last 50

    # No credentials: 401, for pages and for the figures.
    assert requests.get(served + "/console/", timeout=10).status_code == 401
    assert requests.get(served + "/console/api/live", timeout=10).status_code == 401

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    shots = Screenshots(page, tmp_path / "screenshots")
    response = page.goto(served + "/console/")
    assert response is not None and response.status == 401
    page.fill("#token", "not the token")
    page.click("button[type=submit]")
    assert "not the console token" in page.inner_text(".flash-error")
    shots.take("01-sign-in-refused")
    page.fill("#token", CONSOLE_TOKEN)
    page.click("button[type=submit]")
    page.wait_for_selector("table.conversations")

    # The list: five conversations, most recent first (the webhook's), with the cached one marked.
    rows = page.locator("tr.conversation")
    assert rows.count() == 5
    ids = [rows.nth(i).get_attribute("data-id") for i in range(5)]
    assert ids[1:] == [*reversed(others), long_id]
    long_row = page.locator(f'tr.conversation[data-id="{long_id}"]')
    assert "62" in long_row.inner_text() and "cached · 50" in long_row.inner_text()
    page.wait_for_selector('#live-chart[data-samples="1"]')
    shots.take("02-conversations")

    # Search and paging.
    page.fill("input[name=q]", "0002001")
    page.press("input[name=q]", "Enter")
    page.wait_for_selector(f'tr.conversation[data-id="{others[1]}"]')
    assert page.locator("tr.conversation").count() == 1
    page.goto(served + "/console/?per_page=2")
    first_page = page.locator("tr.conversation").count()
    page.click("#older-conversations")
    page.wait_for_url("**before=**")
    second = [
        page.locator("tr.conversation").nth(i).get_attribute("data-id")
        for i in range(page.locator("tr.conversation").count())
    ]
    assert first_page == 2 and second == ids[2:4]

    # The live chart draws the change between polls; make some traffic while it polls.
    page.goto(served + "/console/")
    for n in range(3):
        _post_webhook(served, f"traffic {n}")
        # (A selector, not a script: the console's CSP forbids evaluating strings.)
        page.wait_for_selector(f'#live-chart[data-samples="{n + 2}"]')
    assert page.locator("#live-chart polyline.series.hits").count() == 1
    assert page.inner_text("#fig-breaker") == "closed"
    assert "p95" in page.inner_text("#fig-latency")
    shots.take("03-live-figures")

    # A transcript: the Redis window is marked, the rest is Postgres only; tool calls; TTL.
    page.click(f'tr.conversation[data-id="{long_id}"] a')
    page.wait_for_selector("ol.transcript")
    assert page.locator("li.message.in-window").count() == 50
    assert page.locator("li.message.postgres-only").count() == 12
    assert "50 messages cached" in page.inner_text("#cache-state")
    assert int(page.inner_text("#ttl")) > 0
    assert "current_time" in page.inner_text("li.message.role-assistant .tool-call")
    shots.take("04-transcript")
    page.locator("li.message.in-window").first.scroll_into_view_if_needed()
    page.mouse.wheel(0, -250)
    shots.take("05-window-boundary")
    page.locator(".tool-call").scroll_into_view_if_needed()
    shots.take("05b-tool-call")

    # The search box over the conversation's messages.
    page.fill("input[name=q]", "question 7 ")
    page.press("input[name=q]", "Enter")
    page.wait_for_selector("#search-results li")
    assert "question 7 from +15550007777" in page.inner_text("#search-results")
    shots.take("06-search")

    # Erase, with confirmation; then it is gone from the page, the list and every store.
    page.click("#erase")
    page.wait_for_selector("#confirm-erase")
    assert "62 messages" in page.inner_text("main")
    shots.take("07-erase-confirmation")
    page.click("#confirm-erase")
    page.wait_for_selector(".flash-erased")
    assert f"Conversation {long_id} erased: 62 messages" in page.inner_text(".flash-erased")
    assert page.locator(f'tr.conversation[data-id="{long_id}"]').count() == 0
    shots.take("08-erased")
    gone = page.goto(f"{served}/console/conversations/{long_id}")
    assert gone is not None and gone.status == 404
    assert "it was erased" in page.inner_text("#gone")
    shots.take("09-gone")
    assert harness.memory.count(long_id) == 0
    assert harness.memory.cache_state(long_id) is None
    assert all(path.stat().st_size > 0 for path in shots.taken)
