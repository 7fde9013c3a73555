"""The process commands: ``serve``, ``worker``, ``send`` and ``migrate`` (``app.cli`` parses)."""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from .observability import configure_logging
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

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


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
    from alembic import command
    from alembic.config import Config

    # Alembic's plugin set-up chatter is not news at every start.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
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
    """Run the webhook app: Flask's server (dev) or gunicorn (``--production``)."""
    if production and not (settings.database_url and settings.redis_url):
        # The embedded servers belong to the process that started them; gunicorn's forked
        # workers would inherit (and on exit run) their shutdown. Production has real servers.
        logger.error("--production needs DATABASE_URL and REDIS_URL (embedded servers are for dev)")
        return 2
    settings, urls = _resolved(settings)
    host = host or settings.host
    port = port or settings.port
    if settings.reply_mode == "async" and urls.embedded:
        # `make run` with REST credentials: the async mode needs a worker; start one here.
        _spawn_worker(settings)
    logger.info(
        "serving POST %s on http://%s:%d (%s replies); try: hybrid-memory send 'hello'",
        WEBHOOK_PATH,
        host,
        port,
        settings.reply_mode,
    )
    if production:
        return _serve_gunicorn(settings, host, port, workers or settings.web_workers)
    # SIGTERM (docker stop, kill) exits like Ctrl-C, so atexit stops the embedded servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    from . import create_app

    app = create_app(settings)
    app.run(host=host, port=port, threaded=True, use_reloader=False)
    return 0


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


def _serve_gunicorn(settings: Settings, host: str, port: int, workers: int) -> int:
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
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            from . import create_app

            # One app (pools, agent) per gunicorn worker process, built after the fork.
            return create_app(settings)

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
    """Post ``text`` as a correctly signed Twilio webhook to a running app; print the reply."""
    import requests

    from .webhook_auth import webhook_auth_token

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
    except requests.RequestException as exc:
        print(f"could not reach {url}: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"HTTP {response.status_code}: {response.text.strip()}", file=sys.stderr)
        return 1
    replies = twiml_messages(response.text)
    for reply in replies:
        print(reply)
    if not replies:
        print(
            "(no reply in the response: in async mode it goes out through the Twilio API)",
            file=sys.stderr,
        )
    return 0
