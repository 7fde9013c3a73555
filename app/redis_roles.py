"""The app's two Redis roles: a cache that may forget, and a queue that must not.

* **Cache** (``REDIS_URL``): the memory's per-conversation lists. It may be a Redis Cluster
  (``REDIS_CLUSTER``) and it may evict keys: a missing list is read again from Postgres.
* **Queue** (``QUEUE_REDIS_URL``, default ``REDIS_URL``): turn states, conversation queues and
  locks, rate limits and the RQ jobs of the async mode. A lost key here is a lost reply, so
  the app refuses to start on a queue Redis that may evict keys: a ``maxmemory`` limit with
  any ``maxmemory-policy`` but ``noeviction`` (the ``volatile-*`` ones pick exactly these
  keys, which all carry a TTL) — or only warns with ``QUEUE_REDIS_ALLOW_EVICTION``.
  ``hybrid-memory doctor`` reports the same check. RQ needs a single Redis:
  the async mode with the cache on a cluster needs a ``QUEUE_REDIS_URL``.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from .settings import Settings

logger = logging.getLogger(__name__)

SAFE_POLICY = "noeviction"


class QueueRedisError(ValueError):
    """The queue Redis cannot hold the turn machinery safely (checked at start)."""


def redis_client(url: str, *, cluster: bool, timeout: float) -> redis.Redis | RedisCluster:
    """A client of the Redis (or, with ``cluster``, the Redis Cluster) at ``url``."""
    factory = RedisCluster.from_url if cluster else redis.Redis.from_url
    return factory(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def queue_redis_client(
    settings: Settings, url: str, *, timeout: float | None = None
) -> redis.Redis | RedisCluster:
    """A client of the queue Redis at ``url`` (the resolved ``settings.queue_url``)."""
    return redis_client(
        url,
        cluster=settings.queue_on_cluster,
        timeout=settings.queue_redis_timeout_seconds if timeout is None else timeout,
    )


def check_roles(settings: Settings) -> None:
    """Refuse, before anything is opened, what the roles cannot do."""
    if settings.redis_cluster and not settings.redis_url:
        raise ValueError(
            "REDIS_CLUSTER needs REDIS_URL (a node of the cluster): the embedded Redis is a "
            "single server"
        )
    if settings.queue_redis_url and not settings.redis_url:
        raise ValueError("QUEUE_REDIS_URL needs REDIS_URL (the cache) too")
    if settings.queue_on_cluster and settings.reply_mode == "async":
        raise ValueError(
            "REDIS_CLUSTER with REPLY_MODE=async needs QUEUE_REDIS_URL: the job queue (RQ) "
            "needs a single Redis, RQ does not support Redis Cluster; keep the cache on the "
            "cluster and point QUEUE_REDIS_URL at a single Redis (or use REPLY_MODE=inline)"
        )


def _memory_infos(client: redis.Redis | RedisCluster) -> dict[str, dict[str, Any]]:
    """``INFO memory`` of each server behind ``client`` (INFO works where CONFIG is disabled,
    as on most managed Redis services)."""
    if isinstance(client, RedisCluster):
        found = client.info("memory", target_nodes=RedisCluster.ALL_NODES)
    else:
        found = client.info("memory")
    if "maxmemory_policy" in found:
        return {"redis": found}
    return {str(node): info for node, info in found.items()}


def eviction_problem(client: redis.Redis | RedisCluster, settings: Settings) -> str | None:
    """Why the queue Redis behind ``client`` may evict the turn machinery; ``None`` if it
    cannot: its policy is ``noeviction``, or it has no ``maxmemory`` limit to evict at."""
    evicting = {
        str(info.get("maxmemory_policy"))
        for info in _memory_infos(client).values()
        if info.get("maxmemory_policy") != SAFE_POLICY and int(info.get("maxmemory") or 0) > 0
    }
    if not evicting:
        return None
    where = "QUEUE_REDIS_URL" if settings.queue_redis_url else "REDIS_URL, no QUEUE_REDIS_URL set"
    return (
        f"the queue Redis ({where}) has maxmemory-policy {', '.join(sorted(evicting))} with a "
        "maxmemory limit: under memory pressure it evicts pending turns, locks and jobs, and "
        "their replies are never sent"
    )


EVICTION_FIX = (
    "point QUEUE_REDIS_URL at a Redis with maxmemory-policy noeviction (the cache may stay on "
    "an evicting one), or set QUEUE_REDIS_ALLOW_EVICTION=true to run anyway"
)


def check_queue_redis(client: redis.Redis | RedisCluster, settings: Settings) -> None:
    """Refuse (or, allowed, warn about) a queue Redis that may evict the turn machinery.

    A Redis that does not answer now is not refused: the app starts (its webhooks answer with
    the apology until Redis is back), with a warning that the policy is unchecked.
    """
    try:
        problem = eviction_problem(client, settings)
    except (RedisError, RedisClusterException, OSError) as exc:
        logger.warning(
            "could not read the queue Redis's maxmemory-policy (%s); it must be noeviction",
            type(exc).__name__,
        )
        return
    if problem is None:
        return
    if settings.queue_redis_allow_eviction:
        logger.warning("%s (allowed by QUEUE_REDIS_ALLOW_EVICTION)", problem)
        return
    raise QueueRedisError(f"{problem}. Fix: {EVICTION_FIX}")


def rate_limit_storage(url: str, *, cluster: bool = False) -> tuple[str, dict[str, Any]]:
    """Flask-Limiter's storage URI for the Redis at ``url``, and the options it needs beyond it.

    A Redis Cluster is ``redis+cluster://[user:password@]host:port`` for the ``limits``
    library (a cluster has no database number); ``rediss://`` becomes its ``ssl`` option.
    """
    if not cluster:
        return url, {}
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    if ":" in host:  # IPv6
        host = f"[{host}]"
    auth = parts.netloc.rpartition("@")[0]
    location = f"{host}:{parts.port or 6379}"
    uri = f"redis+cluster://{auth}@{location}" if auth else f"redis+cluster://{location}"
    return uri, {"ssl": True} if parts.scheme == "rediss" else {}
