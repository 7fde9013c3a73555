"""Who may use the operator console, and CSRF protection of its forms.

One secret, the console token (``CONSOLE_TOKEN``; on the embedded dev servers, a dev token kept
in the data directory and printed by ``serve``), accepted three ways:

* the sign-in form, which starts a signed session cookie (browsers);
* ``Authorization: Bearer <token>`` (scripts, ``curl -H``);
* HTTP Basic with the token as password, any user name (``curl -u operator:<token>``).

Without the token every console URL answers 401. Forms that change something (erase, sign in,
sign out) carry a per-session CSRF token; a request authenticated by a Bearer header needs none
(a browser never adds that header on its own), Basic and cookie sessions do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from flask import abort, request, session

from .settings import Settings

DEV_CONSOLE_TOKEN_FILE = "console_dev_token"
SESSION_KEY = "console_signed_in"
CSRF_KEY = "console_csrf"
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class ConsoleCredential:
    token: str
    dev: bool  # generated for the embedded dev servers (printed by `serve`)

    def session_key(self) -> bytes:
        """Flask's cookie-signing key, derived from the token: changing the token signs every
        session out, and several processes (gunicorn workers) agree without another setting."""
        return hashlib.sha256(b"hybrid-memory console session\0" + self.token.encode()).digest()

    def session_mark(self) -> str:
        return hmac.new(self.token.encode(), b"signed in", hashlib.sha256).hexdigest()


def console_credential(settings: Settings, *, embedded: bool) -> ConsoleCredential | None:
    """``CONSOLE_TOKEN``; else, on the embedded dev servers, the dev token; else ``None`` (no
    console)."""
    if settings.console_token:
        return ConsoleCredential(settings.console_token, dev=False)
    if not embedded:
        return None
    return ConsoleCredential(_dev_token(Path(settings.data_dir) / DEV_CONSOLE_TOKEN_FILE), dev=True)


def _dev_token(path: Path) -> str:
    """The token in ``path``, created (mode 0600) by the first process that needs it."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(18)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process wrote it first: use theirs
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
    return token


def _matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def header_auth(token: str) -> str | None:
    """``"bearer"`` or ``"basic"`` when the Authorization header carries the token."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer" and value and _matches(value.strip(), token):
        return "bearer"
    if scheme == "basic" and value:
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        _, sep, password = decoded.partition(":")
        if sep and _matches(password, token):
            return "basic"
    return None


def signed_in(credential: ConsoleCredential) -> bool:
    mark = session.get(SESSION_KEY)
    return isinstance(mark, str) and hmac.compare_digest(mark, credential.session_mark())


def sign_in(credential: ConsoleCredential, given: str) -> bool:
    """Start a session if ``given`` is the token (a fresh session: no fixation)."""
    if not _matches(given, credential.token):
        return False
    session.clear()
    session[SESSION_KEY] = credential.session_mark()
    session[CSRF_KEY] = secrets.token_urlsafe(24)
    return True


def csrf_token() -> str:
    """This session's CSRF token (created on first use), for the forms' hidden field."""
    token = session.get(CSRF_KEY)
    if not isinstance(token, str):
        token = session[CSRF_KEY] = secrets.token_urlsafe(24)
    return token


def check_csrf() -> None:
    """Abort (403) a form POST whose CSRF token is missing or not this session's."""
    expected = session.get(CSRF_KEY)
    given = request.form.get(CSRF_FIELD, "")
    if not isinstance(expected, str) or not given or not _matches(given, expected):
        abort(403, "missing or stale form token: reload the page and try again")
