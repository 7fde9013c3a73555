"""``hybrid-memory doctor`` and readiness on real servers: each check, its failure and its fix;
``/readyz`` is not ready while the database is not migrated."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import sqlalchemy as sa
from flask import Flask
from werkzeug.serving import make_server

from app import create_app
from app.agent import ChatAgent
from app.commands import migrate_database
from app.doctor import Check, check_public_url, print_checks, run_checks
from app.settings import Settings
from lc_hybrid_memory import HybridMemory
from lc_hybrid_memory.embedded import free_port
from tests.support.app_harness import fake_model, signed_app_settings
from tests.support.servers import PrivateServers


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def _settings(database_url: str, redis_url: str, tmp_path: Path, **changes: Any) -> Settings:
    return Settings(database_url=database_url, redis_url=redis_url, data_dir=tmp_path, **changes)


def test_a_migrated_database_passes_and_every_check_is_printed_with_its_fix(
    servers: Any, fresh_database_url: str, tmp_path: Path
) -> None:
    migrate_database(fresh_database_url)
    checks = _by_name(run_checks(_settings(fresh_database_url, servers.redis_url, tmp_path)))
    assert checks["postgres"].status == "ok" and "PostgreSQL" in checks["postgres"].detail
    assert checks["migrations"].status == "ok"
    assert checks["redis"].status == "ok" and "Redis" in checks["redis"].detail
    assert checks["pgvector"].status in ("ok", "warn")  # the machine's Postgres may lack it
    if servers.embedded:  # pgserver ships pgvector
        assert checks["pgvector"].status == "ok"
    for name in ("twilio token", "public url", "console", "model"):
        assert checks[name].status == "warn" and checks[name].fix, name

    out = io.StringIO()
    assert print_checks(list(checks.values()), out) == 0  # warnings do not fail it
    text = out.getvalue()
    assert "fix: set TWILIO_AUTH_TOKEN" in text and "fix: set CONSOLE_TOKEN" in text
    assert text.rstrip().endswith("ok")


def test_an_unmigrated_database_fails_with_the_migrate_fix(
    servers: Any, fresh_database_url: str, tmp_path: Path
) -> None:
    checks = run_checks(_settings(fresh_database_url, servers.redis_url, tmp_path))
    migrations = _by_name(checks)["migrations"]
    assert migrations.status == "fail" and "not migrated" in migrations.detail
    assert "hybrid-memory migrate" in (migrations.fix or "")
    assert print_checks(checks, io.StringIO()) == 1


def test_unreachable_servers_and_a_wrong_database_name(
    servers: Any, fresh_database_url: str, tmp_path: Path
) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/app"
    no_redis = f"redis://127.0.0.1:{free_port()}/0"
    checks = _by_name(run_checks(_settings(nowhere, no_redis, tmp_path)))
    assert checks["postgres"].status == "fail"
    assert "cannot reach Postgres" in checks["postgres"].detail
    assert "DATABASE_URL" in (checks["postgres"].fix or "")
    assert checks["redis"].status == "fail" and "cannot reach Redis" in checks["redis"].detail

    wrong = sa.engine.make_url(fresh_database_url).set(database="no_such_db_here")
    checks = _by_name(
        run_checks(_settings(wrong.render_as_string(False), servers.redis_url, tmp_path))
    )
    assert 'no database "no_such_db_here"' in checks["postgres"].detail
    assert "createdb no_such_db_here" in (checks["postgres"].fix or "")

    half = run_checks(Settings(database_url=fresh_database_url, data_dir=tmp_path))
    assert half[0].status == "fail" and "both" in half[0].detail


def test_eviction_policy_of_the_queue_redis(
    private_servers: PrivateServers, fresh_database_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(private_servers.redis_url)
    client.config_set("maxmemory", "100mb")
    client.config_set("maxmemory-policy", "allkeys-lru")
    settings = _settings(fresh_database_url, private_servers.redis_url, tmp_path)
    inline = _by_name(run_checks(settings))["eviction"]
    assert inline.status == "fail" and "allkeys-lru" in inline.detail  # serve refuses it
    assert "noeviction" in (inline.fix or "")
    asynchronous = _by_name(
        run_checks(
            _settings(
                fresh_database_url,
                private_servers.redis_url,
                tmp_path,
                reply_mode="async",
                twilio_account_sid="AC" + "1" * 32,
                twilio_auth_token="token",
            )
        )
    )
    assert asynchronous["eviction"].status == "fail"  # queued jobs could vanish
    assert asynchronous["reply mode"].status == "ok"
    client.config_set("maxmemory-policy", "noeviction")
    assert _by_name(run_checks(settings))["eviction"].status == "ok"
    client.close()


def test_twilio_settings(servers: Any, fresh_database_url: str, tmp_path: Path) -> None:
    bad_sid = _by_name(
        run_checks(
            _settings(
                fresh_database_url,
                servers.redis_url,
                tmp_path,
                twilio_account_sid="AC123",
                twilio_auth_token="t",
                console_token="c",
            )
        )
    )
    assert bad_sid["twilio account"].status == "fail"
    assert bad_sid["twilio token"].status == "ok" and bad_sid["console"].status == "ok"
    missing = _by_name(
        run_checks(_settings(fresh_database_url, servers.redis_url, tmp_path, reply_mode="async"))
    )
    assert missing["reply mode"].status == "fail"


@pytest.fixture
def live_app(servers: Any, fresh_database_url: str, tmp_path: Path) -> Iterator[str]:
    """A migrated app served over HTTP; its origin."""
    migrate_database(fresh_database_url)
    settings = signed_app_settings(fresh_database_url, servers.redis_url, tmp_path)
    memory = HybridMemory.from_urls(redis_url=servers.redis_url, database_url=fresh_database_url)
    app = create_app(settings, memory=memory, agent=ChatAgent(memory, settings, model=fake_model()))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.port}"
    server.shutdown()
    thread.join(5)
    app.extensions["hybrid_memory"].redis.close()
    memory.close()


def test_public_url_is_probed(live_app: str, tmp_path: Path) -> None:
    public = "https://bot.example.com"

    def through_the_tunnel(url: str) -> int:  # the tunnel: the public origin → this app
        return requests.get(url.replace(public, live_app), timeout=5).status_code

    settings = Settings(public_base_url=public, data_dir=tmp_path)
    answered = check_public_url(settings, probe=through_the_tunnel)
    assert answered.status == "ok" and f"POST {public}/twilio/messages" in answered.detail

    def closed_tunnel(url: str) -> int:
        return requests.get(f"http://127.0.0.1:{free_port()}/healthz", timeout=5).status_code

    silent = check_public_url(settings, probe=closed_tunnel)
    assert silent.status == "warn" and "does not answer" in silent.detail
    plain = check_public_url(Settings(public_base_url="http://bot.example.com", data_dir=tmp_path))
    assert plain.status == "warn" and "not https" in plain.detail


def test_readyz_is_not_ready_until_the_database_is_migrated(
    servers: Any, fresh_database_url: str, tmp_path: Path
) -> None:
    settings = signed_app_settings(fresh_database_url, servers.redis_url, tmp_path)
    memory = HybridMemory.from_urls(redis_url=servers.redis_url, database_url=fresh_database_url)
    app: Flask = create_app(
        settings, memory=memory, agent=ChatAgent(memory, settings, model=fake_model())
    )
    client = app.test_client()
    response = client.get("/readyz")
    body = response.get_json()
    assert response.status_code == 503
    assert body["checks"]["postgres"] == "ok" and body["checks"]["redis"] == "ok"
    assert "not migrated" in body["checks"]["migrations"]
    assert "hybrid-memory migrate" in body["checks"]["migrations"]

    migrate_database(fresh_database_url)
    response = client.get("/readyz")
    assert response.status_code == 200 and response.get_json()["checks"]["migrations"] == "ok"
    app.extensions["hybrid_memory"].redis.close()
    memory.close()
