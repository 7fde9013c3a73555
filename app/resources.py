"""Opening the storage the app runs on: the configured URLs, or embedded servers."""

from __future__ import annotations

import atexit
import logging
from dataclasses import dataclass

from lc_hybrid_memory import HybridMemory

from .settings import Settings

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
    )
