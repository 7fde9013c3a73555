"""Who may call the webhook: the secret requests are signed with, and the URL they are signed for.

The secret is ``TWILIO_AUTH_TOKEN``; without it, a local dev token that ``hybrid-memory serve``,
``worker`` and ``send`` share through the data directory. Several processes may start at once on
one directory (compose starts the app and the worker together, gunicorn forks its workers), so
the file is created whole or not at all: written to a temporary file, then hard-linked into
place, which never replaces an existing file — the first process's token wins and nobody ever
reads a half-written one. A token that is empty or short is refused at start: a signature made
with an empty key is no check at all.

The URL is ``PUBLIC_BASE_URL`` when set. Otherwise it is the request's own, whose host comes
from the ``Host`` header or, behind trusted proxies, ``X-Forwarded-Host`` — both chosen by the
caller. A request that another app of the same Twilio account received (another host) carries
a valid signature for *that* host, so the host must be one of ``PUBLIC_HOSTS`` (required
behind proxies, see :class:`~app.settings.Settings`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from flask import Request

from .settings import Settings

logger = logging.getLogger(__name__)

DEV_TOKEN_FILE = "twilio_dev_auth_token"
MIN_TOKEN_CHARS = 16  # Twilio's auth tokens have 32


class AuthTokenError(ValueError):
    """The webhook secret is unusable (empty or too short): refused at start."""


def webhook_auth_token(settings: Settings) -> str:
    """The secret webhooks are signed with: ``TWILIO_AUTH_TOKEN``, else the local dev token.

    Signature checks are never switched off: real Twilio traffic needs the real token.
    Raises :class:`AuthTokenError` for an empty or short token.
    """
    if settings.twilio_auth_token is not None:
        _check(settings.twilio_auth_token, "TWILIO_AUTH_TOKEN")
        return settings.twilio_auth_token
    path = Path(settings.data_dir) / DEV_TOKEN_FILE
    token = _read(path)
    if token is None:
        token = _create(path)
    _check(token, f"the dev token in {path}", remedy=f"delete {path} to get a new one")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        logger.warning(
            "the dev token file %s is readable by other users (mode %o): chmod 600 it", path, mode
        )
    return token


def _check(token: str, source: str, remedy: str = "use your Twilio auth token") -> None:
    stripped = token.strip()
    if len(stripped) < MIN_TOKEN_CHARS:
        size = "empty" if not stripped else f"only {len(stripped)} characters long"
        raise AuthTokenError(
            f"{source} is {size}: webhook signatures need a secret of at least "
            f"{MIN_TOKEN_CHARS} characters; {remedy}"
        )


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def _create(path: Path) -> str:
    """Create the dev token file atomically; the token in it (ours, or a faster process's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{DEV_TOKEN_FILE}.")  # 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(token)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)  # atomic, and never replaces the file another made
        except FileExistsError:
            return _read(path) or ""
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    logger.warning(
        "TWILIO_AUTH_TOKEN is not set: webhooks are checked against the local dev token in %s "
        "(hybrid-memory send uses it; real Twilio requests will be refused)",
        path,
    )
    return token


def signed_url(settings: Settings, request: Request) -> str | None:
    """The URL Twilio requested, as it signed it; ``None`` if its host is not ours.

    With ``PUBLIC_BASE_URL`` the scheme and host are the configured public ones (behind a proxy
    or tunnel the app sees another host); otherwise the request's own URL, which reflects
    ``X-Forwarded-*`` only when ``TRUSTED_PROXY_HOPS`` enabled ProxyFix, and whose host must
    then be one of ``PUBLIC_HOSTS`` (when set).
    """
    query = request.query_string.decode("latin-1")
    suffix = request.path + (f"?{query}" if query else "")
    if settings.public_base_url:
        return settings.public_base_url + suffix
    if settings.public_hosts and not _is_public_host(request.host, settings.public_hosts):
        return None
    return request.root_url.rstrip("/") + suffix  # root_url keeps an X-Forwarded-Prefix


def _is_public_host(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether ``host`` (``name`` or ``name:port``) is allowed: listed as is, or by name."""
    allowed_lower = {entry.lower() for entry in allowed}
    host = host.lower()
    name = urlsplit(f"//{host}").hostname or ""
    return host in allowed_lower or name in allowed_lower
