"""Shared pieces of the app tests: signed webhooks, a counting fake model, a capturing Twilio
HTTP client, and an app on its own migrated database, Redis prefix and RQ queue (the
``harness`` fixture of ``tests/app/conftest.py`` builds one per test).

Everything runs on the session's real Redis and Postgres (see ``tests/conftest.py``); nothing
is flushed, so the tests also run against shared servers.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatResult
from pydantic import Field
from redis.cluster import RedisCluster
from twilio.http import HttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.request_validator import RequestValidator
from werkzeug.test import TestResponse

from app import create_app
from app.agent import ChatAgent, Wiring
from app.commands import migrate_database
from app.settings import WEBHOOK_PATH, Settings
from app.webhook_client import DEV_SENDER, DEV_SERVICE_NUMBER, twilio_form, twiml_messages
from app.wiring import Services
from lc_hybrid_memory import HybridMemory, sync_url

AUTH_TOKEN = "test-auth-token-0123456789abcdef"
ACCOUNT_SID = "AC" + "1" * 32
PUBLIC_BASE_URL = "https://bot.example.com"
WEBHOOK = WEBHOOK_PATH
SENDER = DEV_SENDER
OUR_NUMBER = DEV_SERVICE_NUMBER

# Parametrisations of the ``harness`` fixture (tests/app/conftest.py) by the Redis it runs on.
REDIS_TOPOLOGIES = ("redis", "redis-cluster")
ON_BOTH_REDIS_TOPOLOGIES = pytest.mark.parametrize("harness", REDIS_TOPOLOGIES, indirect=True)
ON_REDIS_CLUSTER = pytest.mark.parametrize("harness", ["redis-cluster"], indirect=True)


def new_sid() -> str:
    return f"SM{uuid.uuid4().hex}"


def form(body: str, *, sid: str | None = None, sender: str = SENDER, **extra: str) -> dict:
    """What Twilio posts for an inbound SMS (plus ``extra`` fields)."""
    fields = twilio_form(
        body, sender=sender, to=OUR_NUMBER, account_sid=ACCOUNT_SID, message_sid=sid
    )
    fields.update(extra)
    return fields


def signature(fields: dict, url: str = PUBLIC_BASE_URL + WEBHOOK, token: str = AUTH_TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, fields)


def post_signed(client: FlaskClient, fields: dict, **kwargs: Any) -> TestResponse:
    return client.post(
        WEBHOOK, data=fields, headers={"X-Twilio-Signature": signature(fields)}, **kwargs
    )


def replies(response: TestResponse) -> list[str]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return twiml_messages(response.get_data(as_text=True))


class CountingFakeModel(FakeMessagesListChatModel):
    """langchain-core's fake chat model, counting its calls and recording what it was shown.

    ``delay`` makes a call slow (ordering tests); ``fail`` makes it raise (failure tests).
    """

    calls: list[dict[str, Any]] = Field(default_factory=list)
    delay: float = 0.0
    fail: bool = False

    def bind_tools(self, tools: Any, **kwargs: Any) -> CountingFakeModel:
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        started = time.monotonic()
        if self.delay:
            time.sleep(self.delay)
        self.calls.append(
            {"messages": list(messages), "started": started, "ended": time.monotonic()}
        )
        if self.fail:
            raise RuntimeError("the model is down")
        return super()._generate(messages, *args, **kwargs)

    def texts_seen(self, call: int) -> list[str]:
        return [m.text for m in self.calls[call]["messages"] if m.type in ("human", "ai")]


def fake_model(*replies_: str, **options: Any) -> CountingFakeModel:
    return CountingFakeModel(responses=[AIMessage(r) for r in replies_ or ("ok",)], **options)


class CapturingTwilioHttp(HttpClient):
    """twilio's HTTP client hook: records every REST call and answers like the API, offline."""

    def __init__(self, *, status: int = 201) -> None:
        super().__init__(logging.getLogger("test.twilio"), is_async=False)
        self.requests: list[dict[str, Any]] = []
        self.status = status
        self.error_message = "invalid 'To' number"  # what an error answer says
        self.lock = threading.Lock()

    def request(
        self, method: str, uri: str, params: Any = None, data: Any = None, **kwargs: Any
    ) -> TwilioResponse:
        with self.lock:
            self.requests.append({"method": method, "uri": uri, "data": dict(data or {})})
        if self.status >= 400:
            error = {"code": 21211, "message": self.error_message, "status": self.status}
            return TwilioResponse(self.status, json.dumps(error))
        message = {
            "sid": new_sid(),
            "status": "queued",
            "to": (data or {}).get("To"),
            "from": (data or {}).get("From"),
            "body": (data or {}).get("Body"),
            "account_sid": ACCOUNT_SID,
        }
        return TwilioResponse(self.status, json.dumps(message))

    @property
    def sent_bodies(self) -> list[str]:
        return [r["data"].get("Body") for r in self.requests]


@dataclass
class AppHarness:
    """Builds apps on one migrated database, Redis prefix and queue (one per test).

    ``redis`` is a client of the queue Redis (turn states, locks, jobs), ``cache`` one of the
    memory's Redis; they are one server unless the harness was given a ``queue_redis_url``.
    """

    settings: Settings
    memory: HybridMemory
    engine: sa.Engine
    redis: redis.Redis | RedisCluster
    cache: redis.Redis | RedisCluster
    http: CapturingTwilioHttp
    built: list[Services] = field(default_factory=list)

    def app(
        self, model: Any = None, *, wiring: Wiring = "runnable_with_history", **changes: Any
    ) -> Flask:
        """An app (inline mode unless ``reply_mode="async"``) whose agent uses ``model``."""
        from twilio.rest import Client

        settings = replace(self.settings, **changes)
        agent = ChatAgent(self.memory, settings, model=model, wiring=wiring)
        twilio_client = Client(ACCOUNT_SID, AUTH_TOKEN, http_client=self.http)
        app = create_app(settings, memory=self.memory, agent=agent, twilio_client=twilio_client)
        app.config["TESTING"] = True
        self.built.append(app.extensions["hybrid_memory"])
        return app

    def rows(self, table: str = "messages") -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            result = conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1"))
            return [dict(row._mapping) for row in result]

    def message_uids(self) -> list[str]:
        return [row["message_uid"] for row in sorted(self.rows(), key=lambda r: r["id"])]


def signed_app_settings(
    database_url: str, redis_url: str, data_dir: Path, **changes: Any
) -> Settings:
    """Settings of an app whose webhooks the tests sign (their token, account and URL): inline
    replies, no rate limit, unless ``changes`` say otherwise."""
    options: dict[str, Any] = {
        "twilio_auth_token": AUTH_TOKEN,
        "twilio_account_sid": ACCOUNT_SID,
        "public_base_url": PUBLIC_BASE_URL,
        "reply_mode": "inline",
        "rate_limit": "",
        **changes,
    }
    return Settings(database_url=database_url, redis_url=redis_url, data_dir=data_dir, **options)


@contextmanager
def app_harness(
    redis_url: str,
    database_url: str,
    unique: str,
    data_dir: Path,
    *,
    cluster: bool = False,
    queue_redis_url: str | None = None,
) -> Iterator[AppHarness]:
    """An :class:`AppHarness` on ``database_url`` (migrated here) and the Redis (or, with
    ``cluster``, the Redis Cluster) at ``redis_url`` — for the turn machinery too, unless
    ``queue_redis_url`` names a single Redis for it; its keys and jobs are removed after."""
    migrate_database(database_url)
    settings = signed_app_settings(
        database_url,
        redis_url,
        data_dir,
        redis_cluster=cluster,
        queue_redis_url=queue_redis_url,
        redis_prefix=f"test:{unique}:",
        queue_name=f"test-turns-{unique}",
        lock_ttl_seconds=5,
        inline_wait_seconds=5,
    )
    memory = HybridMemory.from_urls(
        redis_url=redis_url,
        database_url=database_url,
        prefix=f"test:{unique}:mem:",
        cluster=cluster,
    )
    engine = sa.create_engine(sync_url(database_url))
    cache = RedisCluster.from_url(redis_url) if cluster else redis.Redis.from_url(redis_url)
    queue_client = redis.Redis.from_url(queue_redis_url) if queue_redis_url else cache
    harness = AppHarness(settings, memory, engine, queue_client, cache, CapturingTwilioHttp())
    try:
        yield harness
    finally:
        for services in harness.built:
            if not settings.queue_on_cluster:  # RQ needs a single Redis: else nothing enqueued
                queue = services.queue
                for registry in (
                    queue.failed_job_registry,
                    queue.scheduled_job_registry,
                    queue.finished_job_registry,
                ):
                    for job_id in registry.get_job_ids():
                        registry.remove(job_id, delete_job=True)
                queue.delete(delete_jobs=True)
            services.redis.close()
            services.conversations.close()
        memory.close()
        engine.dispose()
        for client in {id(c): c for c in (cache, queue_client)}.values():
            keys = list(client.scan_iter(match=f"test:{unique}:*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()
