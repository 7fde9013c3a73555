"""The webhook app as gunicorn runs it for the load test: ``bench.webhook_app:create()``.

The real app (``app.create_app``) with the offline model slowed to a fixed think time, and the
memory's public methods timed per request: wall time (``X-Bench-Memory-Ms``, includes waiting
for the GIL behind other request threads) and this thread's CPU time (``X-Bench-Memory-Cpu-Ms``;
``X-Bench-Request-Cpu-Ms`` is the whole request's).
"""

from __future__ import annotations

import functools
import os
import threading
import time
from typing import Any

from app.chat_models import OfflineChatModel

_clock = threading.local()


class ThinkingModel(OfflineChatModel):
    """The offline model, but every call takes ``think_seconds`` (a fixed model latency)."""

    think_seconds: float = 0.05

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any):
        time.sleep(self.think_seconds)
        return super()._generate(messages, stop, run_manager, **kw)


def _timed(fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _clock.ms = getattr(_clock, "ms", 0.0) + (time.perf_counter() - t0) * 1e3
            _clock.cpu = getattr(_clock, "cpu", 0.0) + (time.thread_time() - c0) * 1e3

    return wrapper


def create() -> Any:
    from flask import Response

    from app import create_app
    from app.agent import ChatAgent
    from app.settings import Settings
    from lc_hybrid_memory import HybridMemory

    env = os.environ
    settings = Settings(
        database_url=env["BENCH_WEBHOOK_DATABASE_URL"],
        redis_url=env["BENCH_WEBHOOK_REDIS_URL"],
        twilio_auth_token=env["BENCH_WEBHOOK_TOKEN"],
        public_base_url=env["BENCH_WEBHOOK_BASE_URL"],
        reply_mode="inline",
        rate_limit="",
        redis_prefix="bench:hm:",
        auto_migrate=False,
        log_level="WARNING",
    )
    memory = HybridMemory.from_urls(
        redis_url=settings.redis_url, database_url=settings.database_url, prefix="bench:whm:"
    )
    for name in ("get_messages", "add_messages", "search", "clear"):
        setattr(memory, name, _timed(getattr(memory, name)))
    model = ThinkingModel(think_seconds=float(env.get("BENCH_WEBHOOK_THINK", "0.05")))
    agent = ChatAgent(memory, settings, model=model)
    app = create_app(settings, memory=memory, agent=agent)

    @app.before_request
    def _start() -> None:
        _clock.ms = 0.0
        _clock.cpu = 0.0
        _clock.request_cpu = time.thread_time()

    @app.after_request
    def _report(response: Response) -> Response:
        response.headers["X-Bench-Memory-Ms"] = f"{getattr(_clock, 'ms', 0.0):.4f}"
        response.headers["X-Bench-Memory-Cpu-Ms"] = f"{getattr(_clock, 'cpu', 0.0):.4f}"
        cpu = (time.thread_time() - getattr(_clock, "request_cpu", time.thread_time())) * 1e3
        response.headers["X-Bench-Request-Cpu-Ms"] = f"{cpu:.4f}"
        return response

    return app
