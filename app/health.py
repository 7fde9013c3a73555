"""Operations endpoints: ``/healthz`` (process up), ``/readyz`` (Postgres and both Redis roles
answer, the schema is migrated), ``/metrics`` (Prometheus)."""

from __future__ import annotations

import logging
from typing import Any

import redis
import sqlalchemy as sa
from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.cluster import RedisCluster

from .database import create_engine
from .indexing import recall_lag
from .redis_roles import redis_client
from .schema_status import MIGRATE_FIX, schema_status
from .wiring import Services, services

logger = logging.getLogger(__name__)


class ReadinessChecks:
    """Probes with their own short timeouts (``READINESS_TIMEOUT_SECONDS``): a stalled server
    makes /readyz answer 503 within seconds instead of hanging on a pooled connection."""

    def __init__(self, services: Services) -> None:
        settings = services.settings
        self.timeout = settings.readiness_timeout_seconds
        # A fresh connection per check (NullPool): nothing stale, and libpq's connect_timeout
        # bounds a server that accepts but never answers.
        self.engine = create_engine(
            services.urls.database_url,
            connect_timeout=self.timeout,
            poolclass=sa.pool.NullPool,
            connect_args={"options": f"-c statement_timeout={self.timeout * 1000}"},
        )
        # Each Redis role once: the queue's is the cache's unless QUEUE_REDIS_URL.
        self.redis_targets = {"redis": (services.urls.redis_url, settings.redis_cluster)}
        if services.urls.queue_redis_url != services.urls.redis_url:
            self.redis_targets["queue_redis"] = (services.urls.queue_redis_url, False)
        self._clients: dict[str, redis.Redis | RedisCluster] = {}

    def _redis(self, name: str) -> redis.Redis | RedisCluster:
        # Built on first use: a cluster client connects (to learn the slots) when built, and a
        # cluster that is down must make /readyz answer 503, not fail elsewhere.
        if name not in self._clients:
            url, cluster = self.redis_targets[name]
            self._clients[name] = redis_client(url, cluster=cluster, timeout=self.timeout)
        return self._clients[name]

    def run(self) -> dict[str, str]:
        checks: dict[str, str] = {"postgres": "", "migrations": "unknown: postgres unreachable"}
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
                checks["postgres"] = "ok"
                # Without the app's tables every webhook would fail: not ready until migrated.
                status = schema_status(conn)
            checks["migrations"] = (
                "ok" if status.up_to_date else f"error: {status.describe()}; {MIGRATE_FIX}"
            )
        except Exception as exc:  # any failure means "not ready", with the reason
            if not checks["postgres"]:
                checks["postgres"] = f"error: {type(exc).__name__}"
            else:
                checks["migrations"] = f"error: {type(exc).__name__}"
        for name in self.redis_targets:
            try:
                self._redis(name).ping()  # on a cluster: every node
                checks[name] = "ok"
            except Exception as exc:
                checks[name] = f"error: {type(exc).__name__}"
        return checks


def create_blueprint(app_services: Services) -> Blueprint:
    blueprint = Blueprint("ops", __name__)
    checks = ReadinessChecks(app_services)

    @blueprint.get("/healthz")
    def healthz() -> Response:
        """The process runs and serves requests; says nothing about its dependencies."""
        return jsonify(status="ok")

    @blueprint.get("/readyz")
    def readyz() -> tuple[Response, int]:
        """Ready when Postgres and Redis (both roles) answer and the database is migrated."""
        results = checks.run()
        ready = all(value == "ok" for value in results.values())
        if not ready:
            logger.warning("not ready: %s", results)
        details: dict[str, Any] = {}
        if ready:  # how far semantic recall's indexer lags (never a reason to be unready)
            lag = recall_lag(services().memory)
            if lag is not None:
                details["recall"] = lag
        body = jsonify(status="ready" if ready else "unavailable", checks=results, **details)
        return body, 200 if ready else 503

    @blueprint.get("/metrics")
    def metrics() -> Response:
        registry = services().metrics.registry
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    return blueprint
