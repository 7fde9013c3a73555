"""The long-lived objects of one process (app or worker): storage URLs (configured or embedded),
the memory, clients and queues, built once and shared by requests."""

from __future__ import annotations

import atexit
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster
from rq import Queue
from twilio.http.http_client import TwilioHttpClient

from lc_hybrid_memory import HybridMemory

from .conversations import ConversationStore
from .observability import Metrics
from .settings import Settings
from .turns import TurnCoordinator

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StorageURLs:
    redis_url: str
    database_url: str
    embedded: bool


def storage_urls(settings: Settings) -> StorageURLs:
    """``DATABASE_URL``/``REDIS_URL`` when both are set; otherwise start (or reuse) the embedded
    servers under ``settings.data_dir``, stopped when the process that started them exits."""
    if settings.redis_cluster and not settings.redis_url:
        raise ValueError(
            "REDIS_CLUSTER needs REDIS_URL (a node of the cluster): the embedded Redis is a "
            "single server"
        )
    if settings.database_url and settings.redis_url:
        return StorageURLs(settings.redis_url, settings.database_url, embedded=False)
    if settings.database_url or settings.redis_url:
        raise ValueError("set both DATABASE_URL and REDIS_URL, or neither (embedded servers)")
    from lc_hybrid_memory.embedded import EmbeddedServers

    servers = EmbeddedServers(settings.data_dir, persistent=True).start()
    if servers.owner:
        atexit.register(servers.stop)
        logger.info("started embedded Redis and Postgres under %s", servers.data_dir)
    return StorageURLs(servers.redis_url, servers.database_url, embedded=True)


def open_memory(settings: Settings, urls: StorageURLs | None = None) -> HybridMemory:
    """The process's HybridMemory (pools created here, once)."""
    urls = urls or storage_urls(settings)
    return HybridMemory.from_urls(
        redis_url=urls.redis_url,
        database_url=urls.database_url,
        ttl_seconds=settings.memory_ttl_seconds,
        cluster=settings.redis_cluster,
        embeddings="default" if settings.recall_enabled else None,
    )


DEV_TOKEN_FILE = "twilio_dev_auth_token"


def webhook_auth_token(settings: Settings) -> str:
    """The secret webhooks are signed with: ``TWILIO_AUTH_TOKEN``, else a local dev token.

    The dev token lives in the data directory (mode 0600), so ``hybrid-memory serve`` and
    ``hybrid-memory send`` on one machine sign and check with the same secret. Signature checks
    are never switched off: real Twilio traffic needs the real token.
    """
    if settings.twilio_auth_token:
        return settings.twilio_auth_token
    path = Path(settings.data_dir) / DEV_TOKEN_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process wrote it first: use theirs
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
    logger.warning(
        "TWILIO_AUTH_TOKEN is not set: webhooks are checked against the local dev token in %s "
        "(hybrid-memory send uses it; real Twilio requests will be refused)",
        path,
    )
    return token


TURNS_REDIS_TIMEOUT_SECONDS = 2.0


def check_redis_cluster_support(settings: Settings) -> None:
    """Refuse what does not work on a Redis Cluster before anything is opened."""
    if settings.redis_cluster and settings.reply_mode == "async":
        raise ValueError(
            "REDIS_CLUSTER does not work with REPLY_MODE=async: its job queue (RQ) needs a "
            "single Redis, RQ does not support Redis Cluster; use REPLY_MODE=inline"
        )


def redis_client(
    url: str, *, cluster: bool = False, timeout: float = TURNS_REDIS_TIMEOUT_SECONDS
) -> redis.Redis | RedisCluster:
    """A client of the Redis (or, with ``cluster``, the Redis Cluster) at ``url``."""
    factory = RedisCluster.from_url if cluster else redis.Redis.from_url
    return factory(url, socket_timeout=timeout, socket_connect_timeout=timeout)


# A REST call that gets no answer fails (the job is retried) instead of holding a worker.
TWILIO_HTTP_TIMEOUT_SECONDS = 30.0


def twilio_rest_client(settings: Settings, http_client: Any = None) -> Any:
    """The Twilio REST client of the async mode, or ``None`` without credentials.

    ``TWILIO_API_BASE_URL`` sends its requests to another origin (a Twilio API mock, a
    recording proxy, the tests' capture server) with the same paths, form and credentials.
    """
    if not (settings.twilio_account_sid and settings.twilio_auth_token):
        return None
    from twilio.rest import Client

    if http_client is None:
        if settings.twilio_api_base_url:
            http_client = _RebasedHttpClient(
                settings.twilio_api_base_url, timeout=TWILIO_HTTP_TIMEOUT_SECONDS
            )
        else:
            http_client = TwilioHttpClient(timeout=TWILIO_HTTP_TIMEOUT_SECONDS)
    return Client(settings.twilio_account_sid, settings.twilio_auth_token, http_client=http_client)


class _RebasedHttpClient(TwilioHttpClient):
    """twilio's HTTP client, with every request's origin replaced by ``base_url``'s."""

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = urlsplit(base_url)

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        parts = urlsplit(url)
        path = self.base.path.rstrip("/") + parts.path
        url = urlunsplit((self.base.scheme, self.base.netloc, path, parts.query, ""))
        return super().request(method, url, *args, **kwargs)


@dataclass
class Services:
    settings: Settings
    urls: StorageURLs
    memory: HybridMemory
    agent: Any  # app.agent.ChatAgent (or anything with its run_turn)
    redis: redis.Redis | RedisCluster
    conversations: ConversationStore
    turns: TurnCoordinator
    queue: Queue
    metrics: Metrics
    auth_token: str
    twilio_client: Any = None

    def close(self) -> None:
        self.redis.close()
        self.memory.close()


def build_services(
    settings: Settings,
    *,
    memory: HybridMemory | None = None,
    agent: Any = None,
    twilio_client: Any = None,
    metrics: Metrics | None = None,
) -> Services:
    """Open storage (configured URLs or the embedded servers) and build the process's objects.

    Tests pass ``memory`` (on their own database), ``agent`` (with a fake model) and
    ``twilio_client`` (capturing HTTP); production builds them all from ``settings``.
    """
    check_redis_cluster_support(settings)
    urls = storage_urls(settings)
    memory = memory or open_memory(settings, urls)
    if agent is None:
        from .agent import ChatAgent

        agent = ChatAgent(memory, settings)
    metrics = metrics or Metrics()
    metrics.watch_memory(memory)
    # Its own client: turn states, locks and their heartbeat, enqueueing jobs. Longer timeouts
    # than the memory cache's 250 ms, yet short enough that a stalled Redis costs a webhook
    # seconds, not Twilio's whole 15 s (RQ's blocking reads use a connection of their own).
    client = redis_client(urls.redis_url, cluster=settings.redis_cluster)
    # On a Redis Cluster (inline mode only, see check_redis_cluster_support) nothing is ever
    # enqueued: the queue only reports its depth, 0.
    queue = Queue(settings.queue_name, connection=client)
    metrics.watch_queue_depth(lambda: queue.count)
    turns = TurnCoordinator(
        client,
        agent,
        metrics=metrics,
        prefix=settings.redis_prefix,
        lock_ttl_seconds=settings.lock_ttl_seconds,
        state_ttl_seconds=settings.turn_state_ttl_seconds,
        apology=settings.apology_text,
    )
    return Services(
        settings=settings,
        urls=urls,
        memory=memory,
        agent=agent,
        redis=client,
        conversations=ConversationStore(memory.store.engine),
        turns=turns,
        queue=queue,
        metrics=metrics,
        auth_token=webhook_auth_token(settings),
        twilio_client=twilio_client or twilio_rest_client(settings),
    )
