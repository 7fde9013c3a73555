"""``hybrid-memory``: serve | worker | chat | show | send | migrate."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .observability import configure_logging
from .settings import Settings
from .webhook_client import DEV_SENDER, DEV_SERVICE_NUMBER


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybrid-memory",
        description="LangGraph agent with Redis + Postgres memory, behind a Twilio webhook.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the webhook app (embedded servers without URLs)")
    serve.add_argument("--port", type=int, default=None, help="port (default: $PORT or 5000)")
    serve.add_argument("--host", default=None, help="interface (default: $HOST or 127.0.0.1)")
    serve.add_argument(
        "--production", action="store_true", help="run under gunicorn instead of Flask's server"
    )
    serve.add_argument(
        "--workers", type=int, default=None, help="gunicorn workers (--production; $WEB_WORKERS)"
    )

    sub.add_parser("worker", help="run the background worker of the async reply mode")

    chat = sub.add_parser("chat", help="interactive terminal chat with the agent")
    chat.add_argument("--session", default="terminal", help="conversation id (session_id)")

    show = sub.add_parser("show", help="print a stored conversation")
    show.add_argument("session", help="conversation id (session_id)")
    show.add_argument("--limit", type=int, default=None, help="only the last N messages")

    send = sub.add_parser("send", help="post a signed webhook to a running app, print the reply")
    send.add_argument("text", help="message body")
    send.add_argument("--url", default=None, help="webhook URL (default: local app)")
    send.add_argument("--from", dest="from_", default=DEV_SENDER, help="sender number")
    send.add_argument("--to", default=DEV_SERVICE_NUMBER, help="your Twilio number")

    sub.add_parser("migrate", help="apply the Alembic migrations")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    # The app's formatters for every command: never an exception's message (see observability).
    configure_logging(settings.log_level, settings.log_format)
    if args.command in ("chat", "show"):
        from . import terminal

        return terminal.main(args, settings)
    from . import commands

    return commands.main(args, settings)


if __name__ == "__main__":
    sys.exit(main())
