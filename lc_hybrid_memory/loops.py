"""Async resources that belong to one event loop each.

asyncpg connections and redis.asyncio connections are bound to the loop that opened them: a pool
created in one ``asyncio.run()`` fails in the next with "attached to a different loop". A
:class:`PerLoop` creates its resource lazily in each running loop and releases it when that loop
shuts down: ``asyncio.run``, ``asyncio.Runner`` and pytest-asyncio finalise every live async
generator of a loop before closing it, so a parked generator per loop is the loop's shutdown hook.
A loop closed without that step leaves its resource to be abandoned (no I/O) on the next call.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["PerLoop"]

T = TypeVar("T")


class PerLoop(Generic[T]):
    """One ``T`` per running event loop.

    Example::

        engines = PerLoop(lambda: create_async_engine(url), release=lambda e: e.dispose())
        engine = await engines.get()     # this loop's engine, created on first use
    """

    def __init__(
        self,
        create: Callable[[], T],
        *,
        release: Callable[[T], Awaitable[object]],
        abandon: Callable[[T], object] | None = None,
    ) -> None:
        self._create = create
        self._release = release
        self._abandon = abandon
        self._lock = threading.Lock()
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Entry[T]] = (
            weakref.WeakKeyDictionary()
        )

    async def get(self) -> T:
        """The running loop's resource (created, and its shutdown hook armed, on first use)."""
        loop = asyncio.get_running_loop()
        entry = self._by_loop.get(loop)
        if entry is not None:
            return entry.resource
        self._abandon_closed_loops()
        entry = _Entry(self._create())
        with self._lock:
            existing = self._by_loop.setdefault(loop, entry)
        if existing is not entry:  # another task of this loop got there first
            self._drop(entry.resource)
            return existing.resource
        entry.guard = self._guard(loop, entry)
        await entry.guard.__anext__()
        return entry.resource

    def loops(self) -> int:
        """How many loops hold a resource now."""
        with self._lock:
            return len(self._by_loop)

    async def aclose(self) -> None:
        """Release the running loop's resource now (a later call creates a new one)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._by_loop.get(loop)
        if entry is not None and entry.guard is not None:
            await entry.guard.aclose()
        self._abandon_closed_loops()

    def abandon_closed(self) -> None:
        """Forget the resources of loops that were closed without shutting them down."""
        self._abandon_closed_loops()

    async def _guard(
        self, loop: asyncio.AbstractEventLoop, entry: _Entry[T]
    ) -> AsyncGenerator[None]:
        try:
            yield
        finally:
            with self._lock:
                if self._by_loop.get(loop) is entry:
                    del self._by_loop[loop]
            await self._release(entry.resource)

    def _abandon_closed_loops(self) -> None:
        with self._lock:
            closed = [loop for loop in self._by_loop if loop.is_closed()]
            entries = [self._by_loop.pop(loop) for loop in closed]
        for entry in entries:
            self._drop(entry.resource)

    def _drop(self, resource: T) -> None:
        if self._abandon is not None:
            self._abandon(resource)


class _Entry(Generic[T]):
    __slots__ = ("guard", "resource")

    def __init__(self, resource: T) -> None:
        self.resource = resource
        self.guard: AsyncGenerator[None] | None = None
