"""The process commands: ``serve``, ``worker``, ``send`` and ``migrate`` (``app.cli`` parses)."""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
from typing import Any

from .observability import configure_logging
from .schema_status import MIGRATIONS_DIR, quiet_alembic
from .settings import WEBHOOK_PATH, Settings
from .webhook_client import (
    DEV_SENDER,
    DEV_SERVICE_NUMBER,
    SIGNATURE_HEADER,
    signature,
    twilio_form,
    twiml_messages,
)
from .wiring import StorageURLs, storage_urls

logger = logging.getLogger(__name__)


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``args.command``; the exit status."""
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "send":
        return send(settings, args.text, url=args.url, sender=args.from_, to=args.to)
    if args.command == "migrate":
        urls = storage_urls(settings)
        migrate_database(
            urls.database_url, connect_timeout=settings.database_connect_timeout_seconds
        )
        print("database schema is at the latest revision")
        return 0
    if args.command == "worker":
        return run_worker_command(settings)
    if args.command == "index":
        return run_index_command(settings, backfill=args.backfill, reembed=args.reembed)
    if args.command == "serve":
        return serve(
            settings,
            host=args.host,
            port=args.port,
            production=args.production,
            workers=args.workers,
        )
    raise ValueError(f"unknown command {args.command!r}")


# -- migrate -------------------------------------------------------------------------------------


def migrate_database(
    database_url: str, revision: str = "head", *, connect_timeout: int | None = None
) -> None:
    """Apply the Alembic migrations (``conversations`` and ``messages``) up to ``revision``.

    Safe to run from several processes at once (the migration environment takes a lock).
    ``connect_timeout`` defaults to ``DATABASE_CONNECT_TIMEOUT_SECONDS``'s default.
    """
    quiet_alembic()  # before the import: that is when it announces its plugins
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    if connect_timeout is not None:
        config.attributes["connect_timeout"] = connect_timeout
    command.upgrade(config, revision)


def _resolved(settings: Settings) -> tuple[Settings, StorageURLs]:
    """Settings with concrete storage URLs (the embedded servers' when none are configured)."""
    urls = storage_urls(settings)
    resolved = dataclasses.replace(
        settings, database_url=urls.database_url, redis_url=urls.redis_url
    )
    if settings.auto_migrate or (settings.auto_migrate is None and urls.embedded):
        migrate_database(
            urls.database_url, connect_timeout=settings.database_connect_timeout_seconds
        )
    return resolved, urls


# -- index ---------------------------------------------------------------------------------------


def run_index_command(settings: Settings, *, backfill: bool, reembed: bool) -> int:
    from .indexing import index_command
    from .wiring import open_memory

    settings, urls = _resolved(settings)
    memory = open_memory(settings, urls)
    try:
        return index_command(memory, backfill=backfill, reembed=reembed)
    finally:
        memory.close()


# -- worker --------------------------------------------------------------------------------------


def run_worker_command(settings: Settings) -> int:
    from .wiring import build_services
    from .worker import run_worker

    settings, _ = _resolved(settings)
    services = build_services(settings)
    if services.twilio_client is None:
        logger.error(
            "the worker sends replies by REST: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"
        )
        return 2
    if settings.worker_metrics_port:
        from prometheus_client import start_http_server

        # The worker's own counters (turns, agent errors, replies sent, cache events).
        start_http_server(settings.worker_metrics_port, registry=services.metrics.registry)
    run_worker(services)
    return 0


# -- serve ---------------------------------------------------------------------------------------


def serve(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    production: bool = False,
    workers: int | None = None,
) -> int:
    """Run the webhook app: Flask's server (dev) or gunicorn (``--production``).

    Before anything starts: the port must be free, Postgres reachable and migrated (unless
    AUTO_MIGRATE migrates it); an unreachable Redis is reported and the app starts (the memory
    serves from Postgres meanwhile). "serving on" is printed once the port is bound.
    """
    if production and not (settings.database_url and settings.redis_url):
        # The embedded servers belong to the process that started them; gunicorn's forked
        # workers would inherit (and on exit run) their shutdown. Production has real servers.
        logger.error("--production needs DATABASE_URL and REDIS_URL (embedded servers are for dev)")
        return 2
    host = host or settings.host
    port = port or settings.port
    busy = port_problem(host, port)
    if busy:  # before the embedded servers start: say it at once
        print(f"error: {busy}", file=sys.stderr)
        return 2
    settings, urls = _resolved(settings)
    from .startup_checks import storage_problems

    errors, warnings = storage_problems(urls, cluster=settings.redis_cluster)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if errors:
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        return 2
    if settings.reply_mode == "async" and urls.embedded:
        # `make run` with REST credentials: the async mode needs a worker; start one here.
        _spawn_worker(settings)
    if production:
        return _serve_gunicorn(settings, host, port, workers or settings.web_workers, urls)
    # SIGTERM (docker stop, kill) exits like Ctrl-C, so atexit stops the embedded servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    from werkzeug.serving import make_server

    from . import create_app

    app = create_app(settings)
    _index_inline(app, settings)
    try:
        server = make_server(host, port, app, threaded=True)
    except OSError as exc:  # taken meanwhile
        print(f"error: {port_problem(host, port, exc) or exc}", file=sys.stderr)
        return 2
    print(serving_banner(settings, urls, host, server.port), flush=True)
    server.serve_forever()  # Ctrl-C ends it (and closes the socket)
    return 0


def _index_inline(app: Any, settings: Settings) -> None:
    """In inline mode no worker runs: the serving process indexes for recall itself (several
    gunicorn workers share the queue: each message is taken by one)."""
    if settings.reply_mode == "inline":
        from .indexing import start_indexer

        indexer = start_indexer(app.extensions["hybrid_memory"].memory)
        if indexer is not None:  # before the embedded servers stop (atexit runs last first)
            atexit.register(indexer.stop)


def port_problem(host: str, port: int, error: OSError | None = None) -> str | None:
    """Why the app cannot listen on ``host:port`` (with the setting that changes it), or None."""
    if error is None:
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
            return None
        except OSError as exc:
            error = exc
    if error.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is already in use (another `hybrid-memory serve`?). "
            f"Fix: choose another port: PORT={port + 1} make run, or "
            f"hybrid-memory serve --port {port + 1}"
        )
    if error.errno == errno.EACCES:
        return f"not allowed to listen on port {port}. Fix: use a port above 1023 (PORT=5000)"
    if error.errno == errno.EADDRNOTAVAIL or isinstance(error, socket.gaierror):
        return f"cannot listen on {host}: no such local address. Fix: HOST=127.0.0.1 or 0.0.0.0"
    return f"cannot listen on {host}:{port}: {error.strerror or error}"


def serving_banner(settings: Settings, urls: StorageURLs, host: str, port: int) -> str:
    """What ``serve`` prints once it listens: the URLs, how to try it and how to stop."""
    from .console_auth import DEV_CONSOLE_TOKEN_FILE, console_credential

    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    base = f"http://{shown}:{port}"
    lines = [
        f"serving on {base} ({settings.reply_mode} replies) — Ctrl-C to stop",
        f"  webhook:  POST {base}{WEBHOOK_PATH}   try: hybrid-memory send 'hello'",
    ]
    credential = console_credential(settings, embedded=urls.embedded)
    if credential is None:
        lines.append("  console:  off (set CONSOLE_TOKEN to turn it on)")
    elif credential.dev:
        where = settings.data_dir / DEV_CONSOLE_TOKEN_FILE
        lines.append(f"  console:  {base}/console/   dev token: {credential.token}  ({where})")
    else:
        lines.append(f"  console:  {base}/console/   (sign in with CONSOLE_TOKEN)")
    if urls.embedded:
        lines.append(f"  data:     embedded Redis + Postgres under {settings.data_dir}")
    return "\n".join(lines)


def _spawn_worker(settings: Settings) -> None:
    env = dict(
        os.environ, DATABASE_URL=settings.database_url or "", REDIS_URL=settings.redis_url or ""
    )
    worker = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=env)
    logger.info("started a worker process (pid %d) for the async reply mode", worker.pid)

    def stop() -> None:
        worker.terminate()
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            worker.kill()

    atexit.register(stop)


def _serve_gunicorn(
    settings: Settings, host: str, port: int, workers: int, urls: StorageURLs
) -> int:
    from gunicorn.app.base import BaseApplication

    class Application(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            options: dict[str, Any] = {
                "bind": f"{host}:{port}",
                "workers": workers,
                # Threads: an inline turn blocks on the model; other requests keep flowing.
                "worker_class": "gthread",
                "threads": settings.web_threads,
                # Twilio gives up after 15 s; a worker stuck far longer than that is recycled.
                "timeout": settings.http_timeout_seconds,
                "graceful_timeout": settings.http_graceful_timeout_seconds,
                "accesslog": "-",
                # Printed by the arbiter once it listens, not before.
                "when_ready": lambda _: print(
                    serving_banner(settings, urls, host, port), flush=True
                ),
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            from . import create_app

            # One app (pools, agent) per gunicorn worker process, built after the fork.
            app = create_app(settings)
            _index_inline(app, settings)
            return app

    Application().run()
    return 0


# -- send ----------------------------------------------------------------------------------------


def send(
    settings: Settings,
    text: str,
    *,
    url: str | None = None,
    sender: str = DEV_SENDER,
    to: str = DEV_SERVICE_NUMBER,
) -> int:
    """Post ``text`` as a correctly signed Twilio webhook to a running app; print the reply (and,
    on stderr, the conversation it reached)."""
    import requests

    from .webhook_auth import webhook_auth_token

    local = url is None
    if url is None:
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        url = f"http://{host}:{settings.port}{WEBHOOK_PATH}"
    # The app checks the signature against its public URL when one is configured.
    signed_for = settings.public_base_url + WEBHOOK_PATH if settings.public_base_url else url
    form = twilio_form(text, sender=sender, to=to, account_sid=settings.twilio_account_sid)
    headers = {SIGNATURE_HEADER: signature(webhook_auth_token(settings), signed_for, form)}
    try:
        response = requests.post(
            url, data=form, headers=headers, timeout=settings.send_timeout_seconds
        )
    except requests.ConnectionError:
        if local:
            print(
                f"error: no app answers at {url}. Fix: start one (make run, or "
                "hybrid-memory serve in another terminal), or pass --url",
                file=sys.stderr,
            )
        else:
            print(f"error: could not connect to {url}. Fix: check the URL", file=sys.stderr)
        return 1
    except requests.RequestException as exc:
        print(f"error: no answer from {url}: {type(exc).__name__}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"HTTP {response.status_code}: {response.text.strip()}", file=sys.stderr)
        if response.status_code == 403 and local:
            print(
                "(the app checks signatures with TWILIO_AUTH_TOKEN, or the dev token in its data "
                "directory: run send with the same settings as serve)",
                file=sys.stderr,
            )
        return 1
    replies = twiml_messages(response.text)
    for reply in replies:
        print(reply)
    if not replies:
        print(
            "(no reply in the response: in async mode it goes out through the Twilio API)",
            file=sys.stderr,
        )
    conversation_id = response.headers.get("X-Conversation-Id")
    if conversation_id:
        print(
            f"(conversation {conversation_id}: hybrid-memory show {conversation_id})",
            file=sys.stderr,
        )
    return 0
