"""Types of the test harness's server fixtures (see ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lc_hybrid_memory import HybridMemory


@dataclass(frozen=True)
class ServerURLs:
    """The Redis and Postgres a test session runs on."""

    redis_url: str
    database_url: str
    embedded: bool


MemoryFactory = Callable[..., HybridMemory]
