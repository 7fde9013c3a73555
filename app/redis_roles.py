"""The app's two Redis roles: a cache that may forget, and a queue that must not.

* **Cache** (``REDIS_URL``): the memory's per-conversation lists. It may be a Redis Cluster
  (``REDIS_CLUSTER``) and it may evict keys: a missing list is read again from Postgres.
* **Queue** (``QUEUE_REDIS_URL``, default ``REDIS_URL``): turn states, conversation queues and
  locks, rate limits and the RQ jobs of the async mode. A lost key here is a lost reply, so
  the app refuses to start on a queue Redis whose ``maxmemory-policy`` evicts keys (every
  policy but ``noeviction`` does: the ``volatile-*`` ones pick exactly these keys, which all
  carry a TTL) — or only warns with ``QUEUE_REDIS_ALLOW_EVICTION``. RQ needs a single Redis:
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


def _policies(client: redis.Redis | RedisCluster) -> dict[str, str]:
    """``maxmemory-policy`` of each server behind ``client`` (INFO works where CONFIG is
    disabled, as on most managed Redis services)."""
    if isinstance(client, RedisCluster):
        found = client.info("memory", target_nodes=RedisCluster.ALL_NODES)
    else:
        found = client.info("memory")
    if "maxmemory_policy" in found:
        return {"redis": str(found["maxmemory_policy"])}
    return {str(node): str(info.get("maxmemory_policy")) for node, info in found.items()}


def check_queue_redis(client: redis.Redis | RedisCluster, settings: Settings) -> None:
    """Refuse (or, allowed, warn about) a queue Redis that may evict the turn machinery.

    A Redis that does not answer now is not refused: the app starts (its webhooks answer with
    the apology until Redis is back), with a warning that the policy is unchecked.
    """
    try:
        policies = _policies(client)
    except (RedisError, RedisClusterException, OSError) as exc:
        logger.warning(
            "could not read the queue Redis's maxmemory-policy (%s); it must be noeviction",
            type(exc).__name__,
        )
        return
    evicting = {node: p for node, p in policies.items() if p != SAFE_POLICY}
    if not evicting:
        return
    policies = ", ".join(sorted(set(evicting.values())))
    where = "QUEUE_REDIS_URL" if settings.queue_redis_url else "REDIS_URL, no QUEUE_REDIS_URL set"
    problem = (
        f"the queue Redis ({where}) has maxmemory-policy {policies}: under memory pressure it "
        "evicts pending turns, locks and jobs, and their replies are never sent"
    )
    if settings.queue_redis_allow_eviction:
        logger.warning("%s (allowed by QUEUE_REDIS_ALLOW_EVICTION)", problem)
        return
    raise QueueRedisError(
        f"{problem}. Point QUEUE_REDIS_URL at a Redis with maxmemory-policy noeviction (the "
        "cache may stay on an evicting one), or set QUEUE_REDIS_ALLOW_EVICTION=true to run "
        "anyway"
    )


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
