"""``hybrid-memory``: serve | worker | chat | show | conversations | send | migrate | doctor.

Every command's ``--help`` gives its defaults, the environment variables it reads and examples.
A storage failure ends a command with one line naming the cause and the fix
(:mod:`app.storage_errors`), not a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from .observability import configure_logging
from .settings import Settings
from .webhook_client import DEV_SENDER, DEV_SERVICE_NUMBER

# Every environment variable a command reads, with its default; each --help lists its own.
ENVIRONMENT = {
    "DATABASE_URL, REDIS_URL": "the servers: both, or neither for the embedded Redis + Postgres",
    "HYBRID_MEMORY_DATA_DIR": "where the embedded servers keep their data (default: .data)",
    "LOG_LEVEL, LOG_FORMAT": "INFO | DEBUG ..., text | json (defaults: INFO, text)",
    "TWILIO_AUTH_TOKEN": "signs/checks webhooks (default: a local dev token in the data dir)",
    "TWILIO_ACCOUNT_SID": "your account; with the token, replies default to async (REST)",
    "PUBLIC_BASE_URL": "the https origin Twilio calls (default: the URL the app sees)",
    "MODEL_PROVIDER, MODEL_NAME": "openai | anthropic | ollama and a model (default: offline)",
    "SYSTEM_PROMPT, MEMORY_WINDOW": "the agent's prompt, messages it sees (default: 50)",
    "PORT, HOST": "where to listen (defaults: 5000, 127.0.0.1)",
    "REPLY_MODE": "inline (TwiML) | async (REST) (default: async if both TWILIO_* are set)",
    "REDIS_CLUSTER": "REDIS_URL is a node of a Redis Cluster (default: false)",
    "QUEUE_REDIS_URL": "a noeviction Redis for turns, locks and jobs (default: REDIS_URL)",
    "TRUSTED_PROXY_HOPS, PUBLIC_HOSTS": "proxies to trust, the hosts Twilio calls (default: 0)",
    "AUTO_MIGRATE": "migrate at start (default: only on the embedded servers)",
    "CONSOLE_TOKEN": "the console's credential (default: off; a dev token when embedded)",
    "RQ_QUEUE": "the job queue of the async mode (default: hybrid-memory-turns)",
    "WORKER_METRICS_PORT": "serve the worker's /metrics on this port (default: off)",
    "RECALL": "semantic recall (default: on when the [recall] extra is installed)",
}
STORAGE = ("DATABASE_URL, REDIS_URL", "HYBRID_MEMORY_DATA_DIR", "LOG_LEVEL, LOG_FORMAT")
TWILIO = ("TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID", "PUBLIC_BASE_URL")
MODEL = ("MODEL_PROVIDER, MODEL_NAME", "SYSTEM_PROMPT, MEMORY_WINDOW", "RECALL")


def _environment(*names: str, **overrides: str) -> str:
    width = max(len(name) for name in names) + 2
    return "\n".join(
        f"  {name.ljust(width)}{overrides.get(name.split(',')[0], ENVIRONMENT[name])}"
        for name in names
    )


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout (environment and examples)."""


def _epilog(environment: str, *examples: str) -> str:
    """The environment block and the examples of a --help."""
    lines = ["environment:", environment, "", "examples:" if len(examples) > 1 else "example:"]
    lines += [f"  {example}" for example in examples]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybrid-memory",
        description="LangGraph agent with Redis + Postgres memory, behind a Twilio webhook.",
        formatter_class=_Formatter,
        epilog=_epilog(
            _environment(*STORAGE),
            "hybrid-memory serve            # the app on the embedded servers",
            "hybrid-memory send 'hello'     # a signed webhook to it",
            "hybrid-memory doctor           # what is configured, what to fix",
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, summary: str, environment: str, *examples: str
    ) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=summary,
            description=summary,
            formatter_class=_Formatter,
            epilog=_epilog(environment, *examples),
        )

    serve = command(
        "serve",
        "run the webhook app and the console (embedded servers without URLs)",
        _environment(
            *STORAGE, *TWILIO, *MODEL, "PORT, HOST", "REPLY_MODE", "AUTO_MIGRATE", "CONSOLE_TOKEN"
        ),
        "hybrid-memory serve",
        "PORT=5001 hybrid-memory serve",
        "DATABASE_URL=postgresql://app@db/app REDIS_URL=redis://cache:6379/0 \\\n"
        "    hybrid-memory serve --production --host 0.0.0.0 --workers 4",
    )
    serve.add_argument("--port", type=int, default=None, help="port (default: $PORT, else 5000)")
    serve.add_argument("--host", default=None, help="interface (default: $HOST, else 127.0.0.1)")
    serve.add_argument(
        "--production",
        action="store_true",
        help="run under gunicorn instead of Flask's server (default: off)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="gunicorn workers with --production (default: $WEB_WORKERS, else 2)",
    )

    command(
        "worker",
        "run the background worker of the async reply mode",
        _environment(*STORAGE, *TWILIO, *MODEL, "RQ_QUEUE", "WORKER_METRICS_PORT"),
        "TWILIO_ACCOUNT_SID=AC… TWILIO_AUTH_TOKEN=… hybrid-memory worker",
    )

    chat = command(
        "chat",
        "chat with the agent in the terminal (same agent and memory as the app)",
        _environment(*STORAGE, *MODEL),
        "hybrid-memory chat",
        "hybrid-memory chat --contact +15550001111   # join that Twilio contact's conversation",
        "printf 'hi\\n/stats\\n' | hybrid-memory chat --session demo",
    )
    target = chat.add_mutually_exclusive_group()
    target.add_argument(
        "--session", default="terminal", help="conversation id to chat in (default: terminal)"
    )
    target.add_argument(
        "--contact",
        default=None,
        help="join the conversation of this Twilio contact, e.g. +15550001111 or "
        "whatsapp:+15550001111 (default: none, a separate terminal session)",
    )

    show = command(
        "show",
        "print a stored conversation",
        _environment(*STORAGE),
        "hybrid-memory show +15550001111",
        "hybrid-memory show 3f2a…c9 --limit 10",
        "hybrid-memory show terminal",
    )
    show.add_argument(
        "conversation", help="conversation id, or a contact (+15550001111, whatsapp:+1555…)"
    )
    show.add_argument(
        "--limit", type=int, default=None, help="only the last N messages (default: all)"
    )

    listing = command(
        "conversations",
        "list the Twilio conversations (id, channel, contact, messages, activity, cached)",
        _environment(*STORAGE),
        "hybrid-memory conversations",
        "hybrid-memory conversations --search 555000 --limit 50",
    )
    listing.add_argument(
        "--search", default=None, help="contact, profile name or id prefix (default: all)"
    )
    listing.add_argument(
        "--limit", type=int, default=20, help="most recently active first (default: 20)"
    )

    send = command(
        "send",
        "post a signed webhook to a running app, print the reply and the conversation id",
        _environment(
            "TWILIO_AUTH_TOKEN",
            "HYBRID_MEMORY_DATA_DIR",
            "PUBLIC_BASE_URL",
            "PORT, HOST",
            "TWILIO_ACCOUNT_SID",
            TWILIO_AUTH_TOKEN="the secret to sign with (default: the dev token in the data dir)",
            HYBRID_MEMORY_DATA_DIR="where the dev token is kept (default: .data)",
            PUBLIC_BASE_URL="the URL to sign for, as the app checks it (default: --url)",
            PORT="the local app's port and host (defaults: 5000, 127.0.0.1)",
            TWILIO_ACCOUNT_SID="the AccountSid posted (default: AC000…)",
        ),
        "hybrid-memory send 'hello'",
        "hybrid-memory send --from whatsapp:+15550003333 'what time is it?'",
        "hybrid-memory send --url https://bot.example.com/twilio/messages 'ping'",
    )
    send.add_argument("text", help="message body")
    send.add_argument(
        "--url",
        default=None,
        help="webhook URL (default: http://$HOST:$PORT/twilio/messages, i.e. the local app)",
    )
    send.add_argument(
        "--from",
        dest="from_",
        metavar="NUMBER",
        default=DEV_SENDER,
        help="sender (default: %(default)s)",
    )
    send.add_argument(
        "--to", default=DEV_SERVICE_NUMBER, help="your Twilio number (default: %(default)s)"
    )

    command(
        "migrate",
        "apply the database migrations (safe to run from several processes at once)",
        _environment(*STORAGE),
        "DATABASE_URL=postgresql://app@db/app REDIS_URL=redis://cache:6379/0 hybrid-memory migrate",
    )

    index = command(
        "index",
        "index the messages for semantic recall (what the worker does), with a progress bar",
        _environment(*STORAGE, "RECALL"),
        "hybrid-memory index              # what is queued",
        "hybrid-memory index --backfill   # also the messages stored before recall was on",
        "hybrid-memory index --reembed    # every message again (a new embedder)",
    )
    redo = index.add_mutually_exclusive_group()
    redo.add_argument(
        "--backfill",
        action="store_true",
        help="first queue every message without an entry for the current embedder",
    )
    redo.add_argument(
        "--reembed",
        action="store_true",
        help="first queue every message (old vectors stay searchable until replaced)",
    )

    command(
        "doctor",
        "check the servers and settings, print each check with its fix",
        _environment(*STORAGE, *TWILIO, *MODEL, "REPLY_MODE", "REDIS_CLUSTER", "CONSOLE_TOKEN"),
        "hybrid-memory doctor",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The embedded Postgres asks platformdirs for a runtime dir; its fallback is no news.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"error: configuration: {exc}", file=sys.stderr)
        return 2
    # The app's formatters for every command: never an exception's message (see observability).
    configure_logging(settings.log_level, settings.log_format)
    try:
        return _run(args, settings)
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:  # a setting that cannot work (the message names it)
        if settings.log_level == "DEBUG":
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from .storage_errors import explain

        message = explain(exc, settings.database_url, settings.redis_url)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command in ("chat", "show", "conversations"):
        from . import terminal

        return terminal.main(args, settings)
    if args.command == "doctor":
        from . import doctor

        return doctor.main(settings, sys.stdout)
    from . import commands

    return commands.main(args, settings)


if __name__ == "__main__":
    sys.exit(main())
