"""A small thread-safe circuit breaker for the Redis tier.

closed → (``failure_threshold`` consecutive failures) → open → (``reset_seconds``) → half-open:
one caller probes; success closes the breaker, failure opens it again. While open, callers skip
Redis at once instead of waiting on socket timeouts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["CircuitBreaker"]


class CircuitBreaker:
    """Decides whether Redis may be called now.

    Example::

        breaker = CircuitBreaker(failure_threshold=1, reset_seconds=5)
        if breaker.allow():
            try:
                call_redis()
                breaker.record_success()
            except ConnectionError:
                breaker.record_failure()
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __init__(
        self,
        *,
        failure_threshold: int = 1,
        reset_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._state = self.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self.times_opened = 0

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open`` (open past its pause reads half_open)."""
        with self._lock:
            if self._state == self.OPEN and self._clock() - self._opened_at >= self.reset_seconds:
                return self.HALF_OPEN
            return self._state

    def allow(self) -> bool:
        """Whether this call may go to Redis."""
        if self._state == self.CLOSED:  # the common case needs no lock (one attribute read)
            return True
        with self._lock:
            if self._state == self.CLOSED:
                return True
            if self._state == self.OPEN:
                if self._clock() - self._opened_at < self.reset_seconds:
                    return False
                self._state = self.HALF_OPEN
                self._probing = False
            if self._probing:  # half-open: a single probe at a time
                return False
            self._probing = True
            return True

    def record_success(self) -> None:
        """The call worked: close the breaker."""
        if self._state == self.CLOSED and not self._failures:
            return  # already closed and clean: nothing to write, no lock to take
        with self._lock:
            self._state = self.CLOSED
            self._failures = 0
            self._probing = False

    def record_failure(self) -> None:
        """The call failed: count it, and open the breaker at the threshold or on a failed probe."""
        with self._lock:
            self._failures += 1
            self._probing = False
            if self._state == self.HALF_OPEN or self._failures >= self.failure_threshold:
                if self._state != self.OPEN:
                    self.times_opened += 1
                self._state = self.OPEN
                self._opened_at = self._clock()
