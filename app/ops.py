"""Operations endpoints: ``/healthz`` (process up), ``/readyz`` (Redis and Postgres answer),
``/metrics`` (Prometheus)."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .services import Services

logger = logging.getLogger(__name__)


def create_blueprint() -> Blueprint:
    blueprint = Blueprint("ops", __name__)
    blueprint.add_url_rule("/healthz", view_func=healthz)
    blueprint.add_url_rule("/readyz", view_func=readyz)
    blueprint.add_url_rule("/metrics", view_func=metrics)
    return blueprint


def _services() -> Services:
    return current_app.extensions["hybrid_memory"]


def healthz() -> Response:
    """The process runs and serves requests; says nothing about its dependencies."""
    return jsonify(status="ok")


def readyz() -> tuple[Response, int]:
    """Ready when Postgres and Redis both answer (each check bounded by a short timeout)."""
    svc = _services()
    checks: dict[str, str] = {}
    try:
        with svc.memory.store.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        checks["postgres"] = "ok"
    except Exception as exc:  # any failure means "not ready", with the reason
        checks["postgres"] = f"error: {type(exc).__name__}"
    try:
        svc.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    if not ready:
        logger.warning("not ready: %s", checks)
    return jsonify(status="ready" if ready else "unavailable", checks=checks), 200 if ready else 503


def metrics() -> Response:
    return Response(generate_latest(_services().metrics.registry), mimetype=CONTENT_TYPE_LATEST)
