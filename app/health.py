"""Operations endpoints: ``/healthz`` (process up), ``/readyz`` (Redis and Postgres answer, the
schema is migrated), ``/metrics`` (Prometheus)."""

from __future__ import annotations

import logging
from typing import Any

import redis
import sqlalchemy as sa
from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.cluster import RedisCluster

from lc_hybrid_memory.store import sync_url

from .indexing import recall_lag
from .schema_status import MIGRATE_FIX, schema_status
from .wiring import Services, redis_client

logger = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 2


class ReadinessChecks:
    """Probes with their own short timeouts: a stalled server makes /readyz answer 503 within
    seconds instead of hanging on a pooled connection (the app's clients wait much longer)."""

    def __init__(self, database_url: str, redis_url: str, *, cluster: bool = False) -> None:
        # A fresh connection per check (NullPool): nothing stale, and libpq's connect_timeout
        # bounds a server that accepts but never answers.
        self.engine = sa.create_engine(
            sync_url(database_url),
            poolclass=sa.pool.NullPool,
            connect_args={
                "connect_timeout": CHECK_TIMEOUT_SECONDS,
                "options": f"-c statement_timeout={CHECK_TIMEOUT_SECONDS * 1000}",
            },
        )
        self.redis_url = redis_url
        self.cluster = cluster
        self._redis: redis.Redis | RedisCluster | None = None

    @property
    def redis(self) -> redis.Redis | RedisCluster:
        # Built on first use: a cluster client connects (to learn the slots) when built, and a
        # cluster that is down must make /readyz answer 503, not the app fail to start.
        if self._redis is None:
            self._redis = redis_client(
                self.redis_url, cluster=self.cluster, timeout=CHECK_TIMEOUT_SECONDS
            )
        return self._redis

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
        try:
            self.redis.ping()  # on a cluster: every node
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
        return checks


def create_blueprint(services: Services) -> Blueprint:
    blueprint = Blueprint("ops", __name__)
    checks = ReadinessChecks(
        services.urls.database_url,
        services.urls.redis_url,
        cluster=services.settings.redis_cluster,
    )

    @blueprint.get("/healthz")
    def healthz() -> Response:
        """The process runs and serves requests; says nothing about its dependencies."""
        return jsonify(status="ok")

    @blueprint.get("/readyz")
    def readyz() -> tuple[Response, int]:
        """Ready when Postgres and Redis both answer and the database is migrated."""
        results = checks.run()
        ready = all(value == "ok" for value in results.values())
        if not ready:
            logger.warning("not ready: %s", results)
        details: dict[str, Any] = {}
        if ready:  # how far semantic recall's indexer lags (never a reason to be unready)
            lag = recall_lag(_services().memory)
            if lag is not None:
                details["recall"] = lag
        body = jsonify(status="ready" if ready else "unavailable", checks=results, **details)
        return body, 200 if ready else 503

    @blueprint.get("/metrics")
    def metrics() -> Response:
        registry = _services().metrics.registry
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    return blueprint


def _services() -> Services:
    return current_app.extensions["hybrid_memory"]
