"""The long-lived objects of one process (app or worker), built once from the settings and
shared by its requests and jobs: storage URLs (configured or embedded), the memory, the queue
Redis and its RQ queue, the turn coordinator, the Twilio REST client. :func:`services` finds
them."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from flask import current_app, has_app_context
from redis.cluster import RedisCluster
from rq import Queue
from twilio.http.http_client import TwilioHttpClient

from lc_hybrid_memory import HybridMemory

from .conversations import ConversationStore
from .database import create_engine
from .observability import Metrics
from .redis_roles import check_queue_redis, check_roles, queue_redis_client
from .settings import Settings
from .turns import TurnCoordinator
from .webhook_auth import webhook_auth_token

logger = logging.getLogger(__name__)

EXTENSION = "hybrid_memory"  # the key of a Flask app's Services in app.extensions


@dataclass(frozen=True)
class StorageURLs:
    redis_url: str  # the memory cache
    queue_redis_url: str  # the turn machinery (the cache's Redis unless QUEUE_REDIS_URL)
    database_url: str
    embedded: bool


def storage_urls(settings: Settings) -> StorageURLs:
    """``DATABASE_URL``/``REDIS_URL`` when both are set; otherwise start (or join) the embedded
    servers under ``settings.data_dir``, stopped when the last process using them exits."""
    check_roles(settings)
    if settings.database_url and settings.redis_url:
        queue = settings.queue_redis_url or settings.redis_url
        return StorageURLs(settings.redis_url, queue, settings.database_url, embedded=False)
    if settings.database_url or settings.redis_url:
        raise ValueError("set both DATABASE_URL and REDIS_URL, or neither (embedded servers)")
    from lc_hybrid_memory.embedded import EmbeddedServers

    servers = EmbeddedServers(settings.data_dir, persistent=True).start()  # released at exit
    if servers.started:
        logger.info("started embedded Redis and Postgres under %s", servers.data_dir)
    return StorageURLs(servers.redis_url, servers.redis_url, servers.database_url, embedded=True)


def open_memory(settings: Settings, urls: StorageURLs | None = None) -> HybridMemory:
    """The process's HybridMemory (pools created here, once), its cache on ``REDIS_URL``."""
    urls = urls or storage_urls(settings)
    return HybridMemory.from_urls(
        redis_url=urls.redis_url,
        database_url=urls.database_url,
        prepared_statements=settings.database_prepared_statements,
        ttl_seconds=settings.memory_ttl_seconds,
        redis_timeout=settings.cache_redis_timeout_seconds,
        cluster=settings.redis_cluster,
        embeddings="default" if settings.recall_enabled else None,
    )


def twilio_rest_client(settings: Settings, http_client: Any = None) -> Any:
    """The Twilio REST client of the async mode, or ``None`` without credentials.

    ``TWILIO_API_BASE_URL`` sends its requests to another origin (a Twilio API mock, a
    recording proxy, the tests' capture server) with the same paths, form and credentials. A
    call that gets no answer fails after ``TWILIO_HTTP_TIMEOUT_SECONDS`` (the job is retried)
    instead of holding a worker.
    """
    if not (settings.twilio_account_sid and settings.twilio_auth_token):
        return None
    from twilio.rest import Client

    if http_client is None:
        timeout = settings.twilio_http_timeout_seconds
        if settings.twilio_api_base_url:
            http_client = _RebasedHttpClient(settings.twilio_api_base_url, timeout=timeout)
        else:
            http_client = TwilioHttpClient(timeout=timeout)
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
    redis: redis.Redis | RedisCluster  # the queue Redis: turns, locks, jobs
    conversations: ConversationStore
    turns: TurnCoordinator
    queue: Queue
    metrics: Metrics
    auth_token: str
    twilio_client: Any = None

    def close(self) -> None:
        self.redis.close()
        self.conversations.close()
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

    Refuses to start (``ValueError`` with the reason) on an unusable webhook secret, a Redis
    role the configuration cannot fill, or a queue Redis that may evict. Tests pass ``memory``
    (on their own database), ``agent`` (with a fake model) and ``twilio_client`` (capturing
    HTTP); production builds them all from ``settings``.
    """
    check_roles(settings)
    auth_token = webhook_auth_token(settings)
    urls = storage_urls(settings)
    # The turn machinery's own client: longer timeouts than the memory cache's, yet short
    # enough that a stalled Redis costs a webhook seconds, not Twilio's whole 15 s (RQ's
    # blocking reads use a connection of their own).
    client = queue_redis_client(settings, urls.queue_redis_url)
    try:
        check_queue_redis(client, settings)
    except BaseException:
        client.close()
        raise
    memory = memory or open_memory(settings, urls)
    if agent is None:
        from .agent import ChatAgent

        agent = ChatAgent(memory, settings)
    metrics = metrics or Metrics()
    metrics.watch_memory(memory)
    # On a Redis Cluster (inline mode only, see check_roles) nothing is ever enqueued: the
    # queue only reports its depth, 0.
    queue = Queue(settings.queue_name, connection=client)
    metrics.watch_queue_depth(lambda: queue.count)
    conversations = ConversationStore(
        create_engine(urls.database_url, connect_timeout=settings.database_connect_timeout_seconds)
    )
    return Services(
        settings=settings,
        urls=urls,
        memory=memory,
        agent=agent,
        redis=client,
        conversations=conversations,
        turns=TurnCoordinator(client, agent, settings, metrics),
        queue=queue,
        metrics=metrics,
        auth_token=auth_token,
        twilio_client=twilio_client or twilio_rest_client(settings),
    )


_process_services: dict[int, Services] = {}


def install_services(services: Services) -> None:
    """Use ``services`` for this process outside a Flask app (the worker command, tests)."""
    _process_services[os.getpid()] = services


def services() -> Services:
    """This process's long-lived objects: inside a request, the current Flask app's; elsewhere
    (an RQ job) the ones installed for this process, built from the environment on first use
    (after a fork too: they are keyed by process id)."""
    if has_app_context():
        return current_app.extensions[EXTENSION]
    found = _process_services.get(os.getpid())
    if found is None:
        found = build_services(Settings.from_env())
        install_services(found)
    return found
