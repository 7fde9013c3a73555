"""The operator console (``/console/``): conversations, transcripts, live figures, erasure.

Server-rendered Jinja pages with a little JavaScript of our own for the live chart; templates
and assets ship in the package (no CDN: it works offline). Access: :mod:`app.console_auth`.
Without a configured credential the console is off and says how to turn it on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage

from lc_hybrid_memory import CacheState, HybridMemoryError, TranscriptEntry, role_of

from . import console_auth
from .console_auth import ConsoleCredential
from .console_figures import live_figures
from .erasure import ErasureError, erase_conversation
from .wiring import Services, services

PAGE_SIZE = 25
TRANSCRIPT_PAGE_SIZE = 100
SEARCH_RESULTS = 20
LIVE_POLL_SECONDS = 2.0

# Every console response: nothing cached, no framing (the erase button), our own assets only.
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
}


def search_messages(services: Services, conversation_id: str, query: str) -> list[BaseMessage]:
    """The search box over a conversation's messages: semantic recall (meaning and exact
    words, best first) when it is on, else the substring search in Postgres (newest first)."""
    memory = services.memory
    if memory.recall_index is not None:
        return memory.recall(conversation_id, query, k=SEARCH_RESULTS)
    return memory.search(conversation_id, query, limit=SEARCH_RESULTS)


@dataclass(frozen=True)
class TranscriptLine:
    """One transcript entry as the page shows it."""

    entry: TranscriptEntry
    role: str
    text: str
    tool_calls: list[str]
    tool_name: str | None
    in_window: bool
    delivery: str | None


def _delivery(entry: TranscriptEntry, message: BaseMessage | None, reply_mode: str) -> str | None:
    """Twilio's side of a message: the inbound MessageSid, or the reply's delivery."""
    if entry.provider_sid:
        return f"sent · {entry.provider_sid}"
    if message is None:
        return None
    if message.type == "human" and entry.message_id and entry.message_id.startswith("SM"):
        return f"received · {entry.message_id}"
    if isinstance(message, AIMessage) and not message.tool_calls and entry.message_id:
        if reply_mode == "async":
            return "not sent through the REST API (yet)"
        # Inline replies travel in the webhook's TwiML answer: Twilio gives them no SID here.
        return "answered in the webhook's TwiML"
    return None


def transcript_lines(
    entries: list[TranscriptEntry], state: CacheState | None, reply_mode: str = "inline"
) -> list[TranscriptLine]:
    cached = set(state.row_ids) if state else set()
    lines = []
    for entry in entries:
        message = entry.message
        calls: list[str] = []
        tool_name = None
        if message is None:
            role, text = "undecodable", "(the stored payload could not be decoded)"
        else:
            role, text = role_of(message), message.text
            if isinstance(message, AIMessage):
                calls = [f"{c['name']}({c['args']})" for c in message.tool_calls]
            elif isinstance(message, ToolMessage):
                tool_name = message.name or "tool"
        in_window = entry.row_id in cached
        delivery = _delivery(entry, message, reply_mode)
        lines.append(TranscriptLine(entry, role, text, calls, tool_name, in_window, delivery))
    return lines


def _services() -> Services:
    return services()


def create_blueprint(credential: ConsoleCredential) -> Blueprint:
    blueprint = Blueprint(
        "console",
        __name__,
        url_prefix="/console",
        template_folder="templates",
        static_folder="static/console",
        static_url_path="/static",
    )

    @blueprint.before_request
    def authenticate() -> Any:
        if request.endpoint in ("console.static", "console.sign_in"):
            return None
        g.console_auth = console_auth.header_auth(credential.token) or (
            "session" if console_auth.signed_in(credential) else None
        )
        if g.console_auth is None:
            return _unauthorized()
        if request.method == "POST" and g.console_auth != "bearer":
            console_auth.check_csrf()
        return None

    @blueprint.after_request
    def secure(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        return response

    @blueprint.app_template_global()
    def csrf_token() -> str:
        return console_auth.csrf_token()

    @blueprint.route("/login", methods=["GET", "POST"])
    def sign_in() -> Any:
        target = request.values.get("next", "")
        # Only back into the console, never off-site.
        target = target if target.startswith("/console/") else url_for("console.index")
        if request.method == "GET":
            if console_auth.signed_in(credential):
                return redirect(target)
            return _login_page(target, status=200)
        console_auth.check_csrf()
        if console_auth.sign_in(credential, request.form.get("token", "")):
            return redirect(target)
        return _login_page(target, status=401, error="That is not the console token.")

    @blueprint.post("/logout")
    def sign_out() -> Any:
        from flask import session

        session.clear()
        return redirect(url_for("console.sign_in"))

    @blueprint.get("/")
    def index() -> Any:
        svc = _services()
        query = request.args.get("q", "").strip()
        before = request.args.get("before") or None
        try:
            per_page = min(max(int(request.args.get("per_page", PAGE_SIZE)), 1), 200)
        except ValueError:
            per_page = PAGE_SIZE
        try:
            rows = svc.conversations.page(search=query or None, limit=per_page + 1, before=before)
        except ValueError:
            return _plain(400, "malformed page cursor")
        more = len(rows) > per_page
        rows = rows[:per_page]
        summaries = svc.memory.summaries([row.id for row in rows])
        cache = {row.id: svc.memory.cache_state(row.id) for row in rows}
        return render_template(
            "console/index.html",
            rows=rows,
            summaries=summaries,
            cache=cache,
            query=query,
            per_page=per_page,
            next_cursor=rows[-1].cursor if more and rows else None,
            first_page=before is None,
            poll_seconds=LIVE_POLL_SECONDS,
        )

    @blueprint.get("/conversations/<conversation_id>")
    def conversation(conversation_id: str) -> Any:
        svc = _services()
        row = svc.conversations.row(conversation_id)
        total = svc.memory.count(conversation_id)
        if row is None and total == 0:
            return render_template("console/gone.html", conversation_id=conversation_id), 404
        try:
            before = int(request.args["before"]) if request.args.get("before") else None
        except ValueError:
            return _plain(400, "before must be a row id")
        entries = svc.memory.transcript(
            conversation_id, limit=TRANSCRIPT_PAGE_SIZE + 1, before_id=before
        )
        older = entries[0].row_id if len(entries) > TRANSCRIPT_PAGE_SIZE else None
        entries = entries[-TRANSCRIPT_PAGE_SIZE:]
        state = svc.memory.cache_state(conversation_id)
        query = request.args.get("q", "").strip()
        found = search_messages(svc, conversation_id, query) if query else None
        return render_template(
            "console/conversation.html",
            conversation_id=conversation_id,
            row=row,
            total=total,
            lines=transcript_lines(entries, state, svc.settings.reply_mode),
            state=state,
            cache_key=_cache_key(svc, conversation_id),
            older=older,
            query=query,
            found=found,
            role_of=role_of,
        )

    @blueprint.get("/conversations/<conversation_id>/erase")
    def confirm_erase(conversation_id: str) -> Any:
        svc = _services()
        row = svc.conversations.row(conversation_id)
        total = svc.memory.count(conversation_id)
        if row is None and total == 0:
            return render_template("console/gone.html", conversation_id=conversation_id), 404
        return render_template(
            "console/erase.html", conversation_id=conversation_id, row=row, total=total
        )

    @blueprint.post("/conversations/<conversation_id>/erase")
    def erase(conversation_id: str) -> Any:
        try:
            erasure = erase_conversation(_services(), conversation_id)
        except (ErasureError, HybridMemoryError) as exc:
            flash(f"Not erased: {exc}", "error")
            return redirect(url_for("console.conversation", conversation_id=conversation_id))
        flash(
            f"Conversation {conversation_id} erased: {erasure.messages} messages, "
            f"{erasure.turn_keys} turn records and its cached window are gone.",
            "erased",
        )
        return redirect(url_for("console.index"))

    @blueprint.get("/api/live")
    def live() -> Response:
        return jsonify(live_figures(_services()))

    return blueprint


def _cache_key(svc: Services, conversation_id: str) -> str | None:
    cache = svc.memory.cache
    return cache.key(conversation_id) if cache is not None else None


def _plain(status: int, text: str) -> Response:
    return Response(text + "\n", status=status, mimetype="text/plain")


def _unauthorized() -> Response:
    """401: the sign-in page for a browser, one line for anything else."""
    wants_html = request.accept_mimetypes.accept_html and request.path.rstrip("/") != (
        "/console/api/live"
    )
    if wants_html:
        response = _login_page(request.full_path.rstrip("?"), status=401)
    else:
        response = _plain(401, "console: sign in, or send the console token as a Bearer token")
    response.headers["WWW-Authenticate"] = 'Bearer realm="hybrid-memory console"'
    return response


def _login_page(target: str, *, status: int, error: str | None = None) -> Response:
    response = current_app.make_response(
        (render_template("console/login.html", next=target, error=error), status)
    )
    response.headers.update(SECURITY_HEADERS)
    return response


def register(app: Flask, services: Services) -> ConsoleCredential | None:
    """Mount the console on ``app`` if a credential is configured (or the servers are the
    embedded dev ones); otherwise ``/console/`` explains how to turn it on. The credential."""
    credential = console_auth.console_credential(services.settings, embedded=services.urls.embedded)
    if credential is None:

        def console_off(path: str = "") -> Response:
            return _plain(404, "the console is off: set CONSOLE_TOKEN to turn it on")

        app.add_url_rule("/console/", "console_off", console_off)
        app.add_url_rule("/console/<path:path>", "console_off", console_off)
        return None
    app.secret_key = app.secret_key or credential.session_key()
    app.config["SESSION_COOKIE_NAME"] = "hybrid_memory_console"
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.register_blueprint(create_blueprint(credential))
    app.extensions["hybrid_memory_console"] = credential
    return credential
