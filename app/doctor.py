"""``hybrid-memory doctor``: checks the configured servers and settings, each with its fix.

Postgres (reachable, version), the migrations, pgvector (semantic recall needs it), Redis
(reachable, version), the queue Redis's eviction policy (turn states and jobs live there), the
Twilio settings, the public URL, the console and the chat model. Exit status 1 when a check
fails; warnings do not fail it.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import sqlalchemy as sa

from .chat_models import PROVIDERS
from .database import create_engine
from .redis_roles import EVICTION_FIX, eviction_problem, redis_client
from .schema_status import MIGRATE_FIX, schema_status
from .settings import Settings
from .storage_errors import explain_postgres, explain_redis, safe_database_url, safe_redis_url
from .webhook_auth import DEV_TOKEN_FILE
from .wiring import StorageURLs, storage_urls

CHECK_TIMEOUT_SECONDS = 3
_SID = re.compile(r"^AC[0-9a-f]{32}$")
_API_KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str | None = None


def _ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def _warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, "warn", detail, fix)


def _fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "fail", detail, fix)


def _split(message: str) -> tuple[str, str]:
    """``"cause. Fix: what to do."`` → (cause, what to do)."""
    cause, _, fix = message.partition(" Fix: ")
    return cause.rstrip("."), fix or "see the cause"


# -- storage ---------------------------------------------------------------------------------


def check_postgres(database_url: str) -> Iterator[Check]:
    engine = create_engine(
        database_url, connect_timeout=CHECK_TIMEOUT_SECONDS, poolclass=sa.pool.NullPool
    )
    where = safe_database_url(database_url)
    try:
        with engine.connect() as conn:
            version = conn.execute(sa.text("SHOW server_version")).scalar()
            yield _ok("postgres", f"PostgreSQL {version} at {where}")
            status = schema_status(conn)
            if status.up_to_date:
                yield _ok("migrations", status.describe())
            else:
                yield _fail("migrations", status.describe(), MIGRATE_FIX)
            yield _pgvector(conn)
    except Exception as exc:
        cause, fix = _split(explain_postgres(exc, database_url) or f"{type(exc).__name__}: {exc}")
        yield _fail("postgres", cause, fix)
    finally:
        engine.dispose()


def _pgvector(conn: sa.Connection) -> Check:
    row = conn.execute(
        sa.text(
            "SELECT default_version, installed_version FROM pg_available_extensions "
            "WHERE name = 'vector'"
        )
    ).one_or_none()
    if row is None:
        return _warn(
            "pgvector",
            "not available on this Postgres (semantic recall needs it; the memory works without)",
            "install pgvector on the server (e.g. apt-get install postgresql-<major>-pgvector) "
            "or use a Postgres image that ships it (pgvector/pgvector)",
        )
    if row.installed_version is None:
        return _ok(
            "pgvector",
            f"available ({row.default_version}), not yet enabled in this database; "
            "recall enables it (CREATE EXTENSION vector, needs the privilege to create it)",
        )
    return _ok("pgvector", f"version {row.installed_version} enabled")


def check_redis(
    redis_url: str,
    settings: Settings,
    *,
    name: str = "redis",
    cluster: bool | None = None,
    eviction: bool = True,
) -> Iterator[Check]:
    """Reachability and version of a Redis; with ``eviction``, the queue role's check (the one
    ``serve`` refuses to start on, see :mod:`app.redis_roles`)."""
    where = safe_redis_url(redis_url)
    cluster = settings.redis_cluster if cluster is None else cluster
    client = None
    try:
        client = redis_client(redis_url, cluster=cluster, timeout=CHECK_TIMEOUT_SECONDS)
        info = client.info("server")
        if cluster:  # one dict per node
            info = next(iter(info.values())) if info and "redis_version" not in info else info
        yield _ok(name, f"Redis {info.get('redis_version', '?')} at {where}")
        if eviction:
            yield _eviction(client, settings)
    except Exception as exc:
        cause, fix = _split(explain_redis(exc, redis_url) or f"{type(exc).__name__}: {exc}")
        yield _fail(name, cause, fix)
    finally:
        if client is not None:
            client.close()


def _eviction(client: Any, settings: Settings) -> Check:
    problem = eviction_problem(client, settings)
    if problem is None:
        return _ok("eviction", "the queue Redis never evicts: queued turns and jobs are kept")
    if settings.queue_redis_allow_eviction:
        return _warn("eviction", f"{problem} (allowed by QUEUE_REDIS_ALLOW_EVICTION)", EVICTION_FIX)
    return _fail("eviction", f"{problem}; serve refuses to start", EVICTION_FIX)


# -- settings --------------------------------------------------------------------------------


def check_twilio(settings: Settings) -> Iterator[Check]:
    if settings.twilio_auth_token:
        yield _ok("twilio token", "TWILIO_AUTH_TOKEN is set: webhooks are checked against it")
    else:
        yield _warn(
            "twilio token",
            f"TWILIO_AUTH_TOKEN is not set: webhooks are checked against the local dev token "
            f"({settings.data_dir / DEV_TOKEN_FILE}); real Twilio requests get 403",
            "set TWILIO_AUTH_TOKEN (Twilio console → Account info → Auth Token)",
        )
    sid = settings.twilio_account_sid
    if sid and not _SID.match(sid):
        yield _fail(
            "twilio account",
            f"TWILIO_ACCOUNT_SID {sid!r} is not AC + 32 hex digits",
            "copy the Account SID from the Twilio console",
        )
    elif settings.reply_mode == "async" and not (sid and settings.twilio_auth_token):
        yield _fail(
            "reply mode",
            "REPLY_MODE=async sends replies through the REST API: it needs both "
            "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN",
            "set them, or REPLY_MODE=inline",
        )
    elif settings.reply_mode == "async":
        yield _ok("reply mode", "async: replies go out through the REST API (run a worker)")
    else:
        yield _ok("reply mode", "inline: replies travel in the webhook's TwiML answer")


def check_public_url(settings: Settings, probe: Callable[[str], int] | None = None) -> Check:
    public = settings.public_base_url
    if not public:
        return _warn(
            "public url",
            "PUBLIC_BASE_URL is not set: the signature is checked against the URL the app sees, "
            "which differs from Twilio's behind a tunnel or proxy (every webhook then gets 403)",
            "set PUBLIC_BASE_URL=https://your-public-host (and the number's webhook to "
            "<that>/twilio/messages)",
        )
    if not public.startswith("https://"):
        return _warn(
            "public url",
            f"{public} is not https: message text would travel unencrypted",
            "serve the app behind TLS and set PUBLIC_BASE_URL=https://…",
        )
    probe = probe or _http_status
    webhook = f"{public}/twilio/messages"
    try:
        status = probe(f"{public}/healthz")
    except Exception as exc:
        return _warn(
            "public url",
            f"{public}/healthz does not answer from here ({type(exc).__name__})",
            f"check the tunnel or proxy; Twilio must reach {webhook}",
        )
    if status != 200:
        return _warn(
            "public url",
            f"{public}/healthz answers HTTP {status}",
            f"route {public} to this app; Twilio must reach {webhook}",
        )
    return _ok("public url", f"{public} answers; the number's messaging webhook: POST {webhook}")


def _http_status(url: str) -> int:
    import requests

    return requests.get(url, timeout=CHECK_TIMEOUT_SECONDS).status_code


def check_console(settings: Settings, urls: StorageURLs) -> Check:
    if settings.console_token:
        return _ok("console", "CONSOLE_TOKEN is set: /console/ is on")
    if urls.embedded:
        return _ok("console", "dev token (embedded servers): `serve` prints it with the URL")
    return _warn("console", "CONSOLE_TOKEN is not set: /console/ is off", "set CONSOLE_TOKEN")


def check_model(settings: Settings) -> Check:
    provider = settings.model_provider
    if provider in (None, "", "offline"):
        return _warn(
            "model",
            "the offline demo model answers (no LLM)",
            "set MODEL_PROVIDER=openai|anthropic|ollama and MODEL_NAME (and the provider's key)",
        )
    if provider not in PROVIDERS:
        return _fail(
            "model", f"unknown MODEL_PROVIDER {provider!r}", "use openai, anthropic, ollama"
        )
    package, extra = PROVIDERS[provider]
    if importlib.util.find_spec(package) is None:
        return _fail(
            "model",
            f"MODEL_PROVIDER={provider} needs {package}",
            f"pip install './app[{extra}]' in the repository (the app's {extra} extra)",
        )
    if not settings.model_name:
        return _fail("model", f"MODEL_PROVIDER={provider} needs MODEL_NAME", "set MODEL_NAME")
    key = _API_KEYS.get(provider)
    if key and not os.environ.get(key):
        return _fail("model", f"{key} is not set", f"export {key}=…")
    return _ok("model", f"{provider} {settings.model_name}")


# -- the command -----------------------------------------------------------------------------


def run_checks(settings: Settings, probe: Callable[[str], int] | None = None) -> list[Check]:
    try:
        urls = storage_urls(settings)
    except ValueError as exc:
        return [_fail("storage", str(exc), "set both DATABASE_URL and REDIS_URL, or neither")]
    where = "embedded servers under " + str(settings.data_dir) if urls.embedded else "configured"
    checks = [_ok("storage", f"{where} (DATABASE_URL / REDIS_URL)")]
    checks += check_postgres(urls.database_url)
    separate_queue = urls.queue_redis_url != urls.redis_url
    checks += check_redis(urls.redis_url, settings, eviction=not separate_queue)
    if separate_queue:  # the cache may evict; the queue Redis may not
        checks += check_redis(urls.queue_redis_url, settings, name="queue redis", cluster=False)
    checks += check_twilio(settings)
    checks.append(check_public_url(settings, probe))
    checks.append(check_console(settings, urls))
    checks.append(check_model(settings))
    return checks


LABELS = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}


def print_checks(checks: list[Check], out: TextIO) -> int:
    """Print one line per check (and its fix); the exit status (1 if any failed)."""
    width = max(len(check.name) for check in checks)
    for check in checks:
        print(f"{LABELS[check.status]}  {check.name.ljust(width)}  {check.detail}", file=out)
        if check.fix:
            print(f"{' ' * (8 + width)}fix: {check.fix}", file=out)
    failed = sum(check.status == "fail" for check in checks)
    warned = sum(check.status == "warn" for check in checks)
    print(f"{failed} failed, {warned} warnings, {len(checks) - failed - warned} ok", file=out)
    return 1 if failed else 0


def main(settings: Settings, out: TextIO) -> int:
    return print_checks(run_checks(settings), out)
