"""Every setting of the app, read from the environment in one place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant answering text messages. Be brief: replies are read on a phone. "
    "Use the tools when they help; use `recall` to look up older parts of this conversation."
)


def _bool(env: Mapping[str, str], name: str) -> bool | None:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return None
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {raw!r}")


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = (env.get(name) or default).strip().lower()
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """The app's configuration. ``Settings.from_env()`` reads it; tests build it directly."""

    # Storage. None → embedded servers under data_dir (make run, tests).
    database_url: str | None = None
    redis_url: str | None = None
    redis_cluster: bool = False  # REDIS_URL is a node of a Redis Cluster (inline mode only)
    data_dir: Path = field(default_factory=lambda: Path(".data"))

    # Twilio.
    twilio_auth_token: str | None = None
    twilio_account_sid: str | None = None
    # Origin of the Twilio REST API for replies; None → Twilio's own. For an API mock, a
    # recording proxy or the tests' capture server (e.g. http://127.0.0.1:8089).
    twilio_api_base_url: str | None = None
    public_base_url: str | None = None  # the URL Twilio calls, e.g. https://example.com
    trusted_proxy_hops: int = 0  # >0: trust X-Forwarded-* from that many proxies (ProxyFix)
    reply_mode: str = "inline"  # inline (TwiML) | async (RQ worker + REST reply)
    rate_limit: str = "30 per minute"  # per sender, Flask-Limiter syntax; "" disables
    max_body_chars: int = 1600  # Twilio's own cap on an inbound Body
    max_request_bytes: int = 64 * 1024  # larger POSTs are refused before they are parsed

    # Turns (both reply modes).
    redis_prefix: str = "hm:"  # prefix of the app's Redis keys (locks, turn states, rate limits)
    queue_name: str = "hybrid-memory-turns"  # RQ queue of the async reply mode
    inline_wait_seconds: float = 10.0  # inline mode: wait this long for a busy conversation
    lock_ttl_seconds: int = 30  # expiry of a conversation lock; renewed while its holder lives
    turn_state_ttl_seconds: int = 2 * 24 * 3600  # how long a MessageSid's outcome is remembered
    apology_text: str = "Sorry, I could not answer that just now. Please try again in a moment."

    # Agent.
    model_provider: str | None = None  # openai | anthropic | ollama | offline; None → offline
    model_name: str | None = None
    offline_model_delay_seconds: float = 0.0  # the offline model "thinks" this long per call
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    memory_window: int = 50
    memory_ttl_seconds: int = 3600
    # Semantic recall (the offline MiniLM embedder of the [recall] extra): the agent's recall
    # tool and the console's search find older messages by meaning. None → on when installed.
    recall: bool | None = None

    # Operator console (/console/). Off without a token, except on the embedded dev servers,
    # where a dev token is kept in data_dir and printed by `serve`.
    console_token: str | None = None

    # Process.
    host: str = "127.0.0.1"
    port: int = 5000
    log_level: str = "INFO"
    log_format: str = "text"  # text | json (one JSON object per line)
    worker_metrics_port: int | None = None  # the worker serves /metrics here when set
    auto_migrate: bool | None = None  # None → migrate at start only on the embedded servers

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
        account_sid = env.get("TWILIO_ACCOUNT_SID") or None
        auth_token = env.get("TWILIO_AUTH_TOKEN") or None
        # Async (ack now, reply through the REST API) needs REST credentials; inline does not.
        default_mode = "async" if account_sid and auth_token else "inline"
        reply_mode = (env.get("REPLY_MODE") or default_mode).strip().lower()
        if reply_mode not in ("inline", "async"):
            raise ValueError(f"REPLY_MODE must be 'inline' or 'async', got {reply_mode!r}")
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            redis_url=env.get("REDIS_URL") or None,
            redis_cluster=_bool(env, "REDIS_CLUSTER") or False,
            data_dir=Path(env.get("HYBRID_MEMORY_DATA_DIR") or ".data"),
            twilio_auth_token=auth_token,
            twilio_account_sid=account_sid,
            twilio_api_base_url=(env.get("TWILIO_API_BASE_URL") or "").rstrip("/") or None,
            public_base_url=(env.get("PUBLIC_BASE_URL") or "").rstrip("/") or None,
            trusted_proxy_hops=_int(env, "TRUSTED_PROXY_HOPS", 0),
            reply_mode=reply_mode,
            rate_limit=env.get("RATE_LIMIT", "30 per minute"),
            max_body_chars=_int(env, "MAX_BODY_CHARS", 1600),
            max_request_bytes=_int(env, "MAX_REQUEST_BYTES", 64 * 1024),
            redis_prefix=env.get("REDIS_KEY_PREFIX") or "hm:",
            queue_name=env.get("RQ_QUEUE") or "hybrid-memory-turns",
            inline_wait_seconds=_float(env, "INLINE_WAIT_SECONDS", 10.0),
            lock_ttl_seconds=_int(env, "TURN_LOCK_SECONDS", 30),
            turn_state_ttl_seconds=_int(env, "TURN_STATE_TTL_SECONDS", 2 * 24 * 3600),
            apology_text=env.get("APOLOGY_TEXT") or cls.apology_text,
            model_provider=(env.get("MODEL_PROVIDER") or "").strip().lower() or None,
            model_name=env.get("MODEL_NAME") or None,
            offline_model_delay_seconds=_float(env, "OFFLINE_MODEL_DELAY_SECONDS", 0.0),
            system_prompt=env.get("SYSTEM_PROMPT") or DEFAULT_SYSTEM_PROMPT,
            memory_window=_int(env, "MEMORY_WINDOW", 50),
            memory_ttl_seconds=_int(env, "MEMORY_TTL_SECONDS", 3600),
            recall=_bool(env, "RECALL"),
            console_token=env.get("CONSOLE_TOKEN") or None,
            host=env.get("HOST", "127.0.0.1"),
            port=_int(env, "PORT", 5000),
            log_level=env.get("LOG_LEVEL", "INFO").upper(),
            log_format=_choice(env, "LOG_FORMAT", ("text", "json"), "text"),
            auto_migrate=_bool(env, "AUTO_MIGRATE"),
            worker_metrics_port=_int(env, "WORKER_METRICS_PORT", 0) or None,
        )
