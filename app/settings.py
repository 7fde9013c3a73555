"""Every setting of the app, read from the environment in one place.

Each field of :class:`Settings` names its environment variable; :meth:`Settings.from_env`
reads them all and falls back to the field's own default, so a default is written once, here.
Timeouts are settings too: every wait of the app (Redis, Postgres, Twilio, jobs, the HTTP
server) is one of the ``*_seconds`` fields below.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lc_hybrid_memory import DEFAULT_WINDOW

WEBHOOK_PATH = "/twilio/messages"  # where Twilio posts inbound messages

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant answering text messages. Be brief: replies are read on a phone. "
    "Use the tools when they help; use `recall` to look up older parts of this conversation."
)
DEFAULT_DATA_DIR = Path(".data")  # embedded servers, dev token
REPLY_MODES = ("inline", "async")
LOG_FORMATS = ("text", "json")


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _number(kind: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        try:
            return kind(raw.strip())
        except ValueError:
            raise ValueError(f"must be {what}") from None

    return parse


def _words(raw: str) -> tuple[str, ...]:
    """A comma- or space-separated list."""
    return tuple(word for word in raw.replace(",", " ").split() if word)


def _url(raw: str) -> str:
    return raw.strip().rstrip("/")


_PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": _number(int, "an integer"),
    "float": _number(float, "a number"),
    "bool": _bool,
    "Path": Path,
    "tuple[str, ...]": _words,
    "tuple[int, ...]": lambda raw: tuple(_number(int, "integers")(w) for w in _words(raw)),
}


def setting(
    default: Any, env: str, *, parse: Callable[[str], Any] | None = None, blank: bool = False
) -> Any:
    """A field read from the environment variable ``env``.

    Unset (or empty, unless ``blank``) → ``default``; otherwise ``parse`` (default: by the
    field's type) turns the text into the value.
    """
    return field(default=default, metadata={"env": env, "parse": parse, "blank": blank})


@dataclass(frozen=True)
class Settings:
    """The app's configuration. ``Settings.from_env()`` reads it; tests build it directly."""

    # -- storage. No DATABASE_URL/REDIS_URL: embedded servers under data_dir (make run, tests).
    database_url: str | None = setting(None, "DATABASE_URL")
    # Off behind PgBouncer in transaction mode, which does not keep prepared statements.
    database_prepared_statements: bool = setting(True, "DATABASE_PREPARED_STATEMENTS")
    # The memory cache. May be a Redis Cluster (redis_cluster) and may evict keys.
    redis_url: str | None = setting(None, "REDIS_URL")
    redis_cluster: bool = setting(False, "REDIS_CLUSTER")  # REDIS_URL is a node of a cluster
    # What must never be lost: turn states, conversation queues, locks, rate limits and the RQ
    # queue. A single Redis; None → REDIS_URL. Its maxmemory-policy must be noeviction.
    queue_redis_url: str | None = setting(None, "QUEUE_REDIS_URL")
    queue_redis_allow_eviction: bool = setting(False, "QUEUE_REDIS_ALLOW_EVICTION")  # warn only
    data_dir: Path = setting(DEFAULT_DATA_DIR, "HYBRID_MEMORY_DATA_DIR")  # noqa: RUF009 (a field)

    # -- Twilio.
    twilio_auth_token: str | None = setting(None, "TWILIO_AUTH_TOKEN")
    twilio_account_sid: str | None = setting(None, "TWILIO_ACCOUNT_SID")
    # Origin of the Twilio REST API for replies; None → Twilio's own. For an API mock, a
    # recording proxy or the tests' capture server (e.g. http://127.0.0.1:8089).
    twilio_api_base_url: str | None = setting(None, "TWILIO_API_BASE_URL", parse=_url)
    public_base_url: str | None = setting(None, "PUBLIC_BASE_URL", parse=_url)  # Twilio calls it
    # Host names (host or host:port) a signed request may be addressed to when the URL comes
    # from the request (no PUBLIC_BASE_URL); required behind trusted proxies.
    public_hosts: tuple[str, ...] = setting((), "PUBLIC_HOSTS")
    trusted_proxy_hops: int = setting(0, "TRUSTED_PROXY_HOPS")  # >0: trust X-Forwarded-*
    # inline (TwiML) | async (RQ worker + REST reply); unset: async with REST credentials.
    reply_mode: str = setting("inline", "REPLY_MODE", parse=str.lower)
    rate_limit: str = setting("30 per minute", "RATE_LIMIT", blank=True)  # per sender; "" = off
    max_body_chars: int = setting(1600, "MAX_BODY_CHARS")  # Twilio's own cap on a Body
    max_request_bytes: int = setting(64 * 1024, "MAX_REQUEST_BYTES")  # refused before parsing

    # -- turns (both reply modes).
    redis_prefix: str = setting("hm:", "REDIS_KEY_PREFIX")  # the app's keys in the queue Redis
    queue_name: str = setting("hybrid-memory-turns", "RQ_QUEUE")
    inline_wait_seconds: float = setting(10.0, "INLINE_WAIT_SECONDS")  # for a busy conversation
    lock_ttl_seconds: int = setting(30, "TURN_LOCK_SECONDS")  # renewed while its holder lives
    turn_state_ttl_seconds: int = setting(2 * 24 * 3600, "TURN_STATE_TTL_SECONDS")
    apology_text: str = setting(
        "Sorry, I could not answer that just now. Please try again in a moment.", "APOLOGY_TEXT"
    )

    # -- agent.
    model_provider: str | None = setting(None, "MODEL_PROVIDER", parse=str.lower)  # None: offline
    model_name: str | None = setting(None, "MODEL_NAME")
    offline_model_delay_seconds: float = setting(0.0, "OFFLINE_MODEL_DELAY_SECONDS")
    system_prompt: str = setting(DEFAULT_SYSTEM_PROMPT, "SYSTEM_PROMPT")
    memory_window: int = setting(DEFAULT_WINDOW, "MEMORY_WINDOW")
    memory_ttl_seconds: int = setting(3600, "MEMORY_TTL_SECONDS")
    # Semantic recall (the offline MiniLM embedder of the [recall] extra): the agent's recall
    # tool and the console's search find older messages by meaning. None: on when installed.
    recall: bool | None = setting(None, "RECALL")

    # -- timeouts. Short on the request path: a stalled server costs a webhook seconds, never
    # Twilio's whole 15 s.
    cache_redis_timeout_seconds: float = setting(0.25, "CACHE_REDIS_TIMEOUT_SECONDS")
    queue_redis_timeout_seconds: float = setting(2.0, "QUEUE_REDIS_TIMEOUT_SECONDS")
    rate_limit_redis_timeout_seconds: float = setting(1.0, "RATE_LIMIT_REDIS_TIMEOUT_SECONDS")
    database_connect_timeout_seconds: int = setting(5, "DATABASE_CONNECT_TIMEOUT_SECONDS")
    readiness_timeout_seconds: int = setting(2, "READINESS_TIMEOUT_SECONDS")  # /readyz probes
    twilio_http_timeout_seconds: float = setting(30.0, "TWILIO_HTTP_TIMEOUT_SECONDS")  # REST
    job_timeout_seconds: int = setting(600, "JOB_TIMEOUT_SECONDS")  # stops a job that hangs
    job_retry_intervals: tuple[int, ...] = setting((2, 10, 30), "JOB_RETRY_INTERVALS")
    job_result_ttl_seconds: int = setting(3600, "JOB_RESULT_TTL_SECONDS")
    job_failure_ttl_seconds: int = setting(7 * 24 * 3600, "JOB_FAILURE_TTL_SECONDS")
    http_timeout_seconds: int = setting(60, "HTTP_TIMEOUT_SECONDS")  # gunicorn recycles a worker
    http_graceful_timeout_seconds: int = setting(30, "HTTP_GRACEFUL_TIMEOUT_SECONDS")
    send_timeout_seconds: float = setting(30.0, "SEND_TIMEOUT_SECONDS")  # hybrid-memory send

    # -- operator console (/console/). Off without a token, except on the embedded dev servers,
    # where a dev token is kept in data_dir and printed by `serve`.
    console_token: str | None = setting(None, "CONSOLE_TOKEN")

    # -- process.
    host: str = setting("127.0.0.1", "HOST")
    port: int = setting(5000, "PORT")
    web_workers: int = setting(2, "WEB_WORKERS")  # gunicorn processes (serve --production)
    web_threads: int = setting(8, "WEB_THREADS")  # per process: an inline turn blocks one
    log_level: str = setting("INFO", "LOG_LEVEL", parse=str.upper)
    log_format: str = setting("text", "LOG_FORMAT", parse=str.lower)  # text | json
    worker_metrics_port: int | None = setting(None, "WORKER_METRICS_PORT")  # worker /metrics
    auto_migrate: bool | None = setting(None, "AUTO_MIGRATE")  # None → only on embedded servers

    def __post_init__(self) -> None:
        if self.reply_mode not in REPLY_MODES:
            raise ValueError(f"REPLY_MODE must be 'inline' or 'async', got {self.reply_mode!r}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"LOG_FORMAT must be one of text, json, got {self.log_format!r}")
        if self.trusted_proxy_hops > 0 and not (self.public_base_url or self.public_hosts):
            # X-Forwarded-Host decides which URL the signature is checked against: a request
            # signed for another host of the same Twilio account would pass.
            raise ValueError(
                "TRUSTED_PROXY_HOPS needs PUBLIC_BASE_URL or PUBLIC_HOSTS (the host names "
                "Twilio calls, e.g. PUBLIC_HOSTS=bot.example.com): behind a proxy the signed "
                "URL's host comes from X-Forwarded-Host"
            )

    @property
    def queue_url(self) -> str | None:
        """The Redis of the turn machinery: QUEUE_REDIS_URL, else REDIS_URL."""
        return self.queue_redis_url or self.redis_url

    @property
    def queue_on_cluster(self) -> bool:
        """Whether the turn machinery shares the cache's Redis Cluster."""
        return self.redis_cluster and not self.queue_redis_url

    @property
    def recall_enabled(self) -> bool:
        """``RECALL``, or when unset whether the default embedder is installed."""
        if self.recall is not None:
            return self.recall
        from lc_hybrid_memory import default_embeddings_installed

        return default_embeddings_installed()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            name, raw = spec.metadata["env"], env.get(spec.metadata["env"])
            if raw is None:
                continue
            raw = raw.strip()
            if not raw and not spec.metadata["blank"]:
                continue
            parse = spec.metadata["parse"] or _PARSERS[str(spec.type).removesuffix(" | None")]
            try:
                values[spec.name] = parse(raw)
            except ValueError as exc:
                raise ValueError(f"{name} {exc}, got {raw!r}") from None
        if (
            "reply_mode" not in values
            and env.get("TWILIO_ACCOUNT_SID")
            and env.get("TWILIO_AUTH_TOKEN")
        ):
            # With REST credentials the default is to ack at once and reply through the API.
            values["reply_mode"] = "async"
        if values.get("worker_metrics_port") == 0:
            values["worker_metrics_port"] = None
        return cls(**values)
