"""The Twilio webhook app: ``create_app(settings)`` builds it; nothing happens at import time."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, g
from flask_limiter import Limiter
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from .settings import Settings

__all__ = ["create_app"]

RATE_LIMIT_REDIS_TIMEOUT_SECONDS = 1.0


def rate_limit_storage(redis_url: str, *, cluster: bool = False) -> tuple[str, dict[str, Any]]:
    """Flask-Limiter's storage URI for ``redis_url``, and the options it needs beyond it.

    A Redis Cluster is ``redis+cluster://[user:password@]host:port`` for the ``limits``
    library (a cluster has no database number); ``rediss://`` becomes its ``ssl`` option.
    """
    if not cluster:
        return redis_url, {}
    parts = urlsplit(redis_url)
    host = parts.hostname or "localhost"
    if ":" in host:  # IPv6
        host = f"[{host}]"
    auth = parts.netloc.rpartition("@")[0]
    location = f"{host}:{parts.port or 6379}"
    uri = f"redis+cluster://{auth}@{location}" if auth else f"redis+cluster://{location}"
    return uri, {"ssl": True} if parts.scheme == "rediss" else {}


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """Build the Flask app.

    ``overrides`` go to :func:`app.wiring.build_services` (tests pass ``memory``, ``agent``
    and ``twilio_client``); without them storage, agent and model come from ``settings``.
    """
    from . import console, health, twilio_webhook
    from .wiring import build_services

    settings = settings or Settings.from_env()
    app = Flask(__name__)
    # Bigger bodies are refused (413) before Werkzeug parses them.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    if settings.trusted_proxy_hops > 0:
        # Only behind proxies we trust: X-Forwarded-* from anyone else could forge the URL
        # that the Twilio signature is checked against.
        hops = settings.trusted_proxy_hops
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops
        )

    services = build_services(settings, **overrides)
    app.extensions["hybrid_memory"] = services
    storage_uri, storage_options = rate_limit_storage(
        services.urls.redis_url, cluster=settings.redis_cluster
    )
    limiter = Limiter(
        key_func=twilio_webhook.sender_key,
        app=app,
        storage_uri=storage_uri,
        key_prefix=f"{settings.redis_prefix}limits",
        strategy="moving-window",
        # Redis down: let the message through (it is still signed and stored) rather than 500.
        swallow_errors=True,
        # Redis stalled: the same, after a second (the default client would wait 5 s, or
        # forever, on a server that accepts but does not answer).
        storage_options={
            "socket_timeout": RATE_LIMIT_REDIS_TIMEOUT_SECONDS,
            "socket_connect_timeout": RATE_LIMIT_REDIS_TIMEOUT_SECONDS,
            **storage_options,
        },
        headers_enabled=False,
    )
    app.register_blueprint(twilio_webhook.create_blueprint(settings, limiter))
    app.register_blueprint(health.create_blueprint(services))
    console.register(app, services)

    @app.after_request
    def conversation_header(response: Response) -> Response:
        # Which conversation a webhook reached: `hybrid-memory send` prints it (Twilio ignores it).
        conversation_id = g.get("conversation_id")
        if conversation_id:
            response.headers["X-Conversation-Id"] = conversation_id
        return response

    @app.errorhandler(HTTPException)
    def short_http_error(error: HTTPException) -> Response:
        # Plain one-line reasons (413 too large, 429 rate limited, 405...), not HTML pages.
        return Response(
            f"{error.description or error.name}\n",
            status=error.code or 500,
            mimetype="text/plain",
        )

    return app
