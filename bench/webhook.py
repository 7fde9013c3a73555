"""Webhook load: the Flask app under gunicorn, fake model with a fixed think time, N senders.

Loopback only, bounded in requests and seconds. Each sender owns its conversations (a person
waits for the reply before writing again), every request is correctly signed, and a reply that
is not a TwiML ``<Message>`` (or is the apology) counts as an error.
"""

from __future__ import annotations

import http.client
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import numpy as np

from lc_hybrid_memory.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "bench_webhook"


def _database_url(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def _prepare_database(database_url: str) -> str:
    import psycopg2

    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{DATABASE}"')
    conn.close()
    url = _database_url(database_url, DATABASE)
    from app.commands import migrate_database

    migrate_database(url)
    return url


def _drop_database(database_url: str) -> None:
    import psycopg2

    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    conn.close()


def _wait_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("gunicorn exited at start")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError("gunicorn did not start listening in time")


def _pct(values: list[float], q: float) -> float | None:
    a = np.asarray([v for v in values if v == v])
    return round(float(np.percentile(a, q)), 3) if a.size else None


def _header(response: http.client.HTTPResponse, name: str) -> float:
    return float(response.getheader(name) or "nan")


class _Load:
    """N senders posting signed webhooks until a request count or a deadline."""

    def __init__(self, port: int, token: str, url: str, conversations: int, offset: int) -> None:
        from twilio.request_validator import RequestValidator

        self.port = port
        self.url = url
        self.validator = RequestValidator(token)
        self.conversations = conversations
        self.offset = offset  # distinct contacts per level: every level starts on new ones

    def run(self, senders: int, max_requests: int, max_seconds: float) -> dict[str, Any]:
        lock = threading.Lock()
        rows: list[tuple[float, float, float, float]] = []
        errors: list[str] = []
        sent = [0]
        deadline = time.monotonic() + max_seconds

        def sender(index: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            mine = [c for c in range(self.conversations) if c % senders == index]
            turn = 0
            while True:
                with lock:
                    if sent[0] >= max_requests or time.monotonic() > deadline:
                        break
                    sent[0] += 1
                contact = self.offset + mine[turn % len(mine)]
                turn += 1
                params = {
                    "MessageSid": "SM" + secrets.token_hex(16),
                    "AccountSid": "AC" + "0" * 32,
                    "From": f"whatsapp:+1555{contact:07d}",
                    "To": "whatsapp:+15550009999",
                    "Body": f"Hello, this is turn {turn}. When does order 4721 arrive?",
                    "NumMedia": "0",
                }
                headers = {
                    "Content-Type": "application/x-www-form-urlencoded",
                    "X-Twilio-Signature": self.validator.compute_signature(self.url, params),
                }
                t0 = time.perf_counter()
                try:
                    conn.request("POST", "/twilio/messages", urlencode(params), headers)
                    response = conn.getresponse()
                    payload = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                    continue
                elapsed = (time.perf_counter() - t0) * 1e3
                ok = response.status == 200 and b"<Message>" in payload and b"Sorry" not in payload

                with lock:
                    rows.append(
                        (
                            elapsed,
                            _header(response, "X-Bench-Memory-Ms"),
                            _header(response, "X-Bench-Memory-Cpu-Ms"),
                            _header(response, "X-Bench-Request-Cpu-Ms"),
                        )
                    )
                    if not ok:
                        errors.append(f"{response.status}: {payload[:120]!r}")
            conn.close()

        started = time.monotonic()
        workers = [threading.Thread(target=sender, args=(i,)) for i in range(senders)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        wall = time.monotonic() - started
        lat = [r[0] for r in rows]
        mem = [r[1] for r in rows]
        mem_cpu = [r[2] for r in rows]
        req_cpu = [r[3] for r in rows]
        total = float(np.nansum(lat)) or 1.0
        return {
            "senders": senders,
            "conversations": self.conversations,
            "requests": len(rows),
            "seconds": round(wall, 1),
            "throughput_rps": round(len(rows) / wall, 1) if wall else 0.0,
            "p50_ms": _pct(lat, 50),
            "p99_ms": _pct(lat, 99),
            "memory_p50_ms": _pct(mem, 50),
            "memory_p99_ms": _pct(mem, 99),
            "memory_cpu_p50_ms": _pct(mem_cpu, 50),
            "memory_cpu_p99_ms": _pct(mem_cpu, 99),
            "request_cpu_p50_ms": _pct(req_cpu, 50),
            "memory_share": round(float(np.nansum(mem)) / total, 4),
            "errors": len(errors),
            "error_samples": errors[:5],
        }


def run_webhook(srv: Any, out: Path, *, quick: bool, log: Any) -> dict[str, Any]:
    try:
        import app  # noqa: F401
        from app.agent import ChatAgent  # noqa: F401
    except ImportError as exc:
        log(f"webhook load skipped: the app is not importable ({exc})")
        return {"skipped": str(exc)}
    conversations = 64 if quick else 160
    # (senders, max requests, max seconds): light load, then enough to saturate 2 cores.
    levels = [(2, 150, 12.0), (8, 400, 20.0)] if quick else [(2, 500, 30.0), (16, 2000, 45.0)]
    think = 0.05
    workers, threads = 2, 8
    database_url = _prepare_database(srv.database_url)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        "BENCH_WEBHOOK_DATABASE_URL": database_url,
        "BENCH_WEBHOOK_REDIS_URL": srv.redis_url,
        "BENCH_WEBHOOK_TOKEN": token,
        "BENCH_WEBHOOK_BASE_URL": base,
        "BENCH_WEBHOOK_THINK": str(think),
    }
    out.mkdir(parents=True, exist_ok=True)
    errlog = open(out / "webhook-gunicorn.log", "w")  # noqa: SIM115
    gunicorn = [
        sys.executable, "-m", "gunicorn",
        "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers), "--worker-class", "gthread", "--threads", str(threads),
        "--timeout", "60", "--graceful-timeout", "5", "--log-level", "warning",
        "bench.webhook_app:create()",
    ]  # fmt: skip
    proc = subprocess.Popen(
        gunicorn, cwd=ROOT, env=env, stdout=errlog, stderr=errlog, start_new_session=True
    )
    results = []
    try:
        _wait_port(port, proc, 60)
        log(f"webhook load: gunicorn {workers}×{threads} on {base}")
        url = base + "/twilio/messages"
        warm = _Load(port, token, url, conversations, offset=0).run(8, 48, 15.0)
        for i, (senders, max_requests, max_seconds) in enumerate(levels, start=1):
            load = _Load(port, token, url, conversations, offset=i * 100_000)
            result = load.run(senders, max_requests, max_seconds)
            results.append(result)
            log(
                f"webhook {senders} senders: {result['requests']} requests in "
                f"{result['seconds']} s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
                f"memory p50/p99 {result['memory_p50_ms']}/{result['memory_p99_ms']} ms "
                f"(cpu {result['memory_cpu_p50_ms']}/{result['memory_cpu_p99_ms']}), "
                f"errors {result['errors']}"
            )
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        errlog.close()
        try:
            _drop_database(srv.database_url)
        except Exception as exc:  # leave it; the report still stands
            log(f"could not drop {DATABASE}: {exc}")
    lines = [
        "",
        "#### Webhook load (gunicorn, fake model)",
        "",
        f"gunicorn {workers} workers × {threads} threads (gthread), the app's offline model "
        f"with a fixed {think * 1e3:.0f} ms think time, {conversations} conversations per "
        "level (each sender waits for its reply before the next message), signed requests, "
        "inline TwiML replies, loopback; the load generator runs on the same 2 cores. Memory "
        "layer = the HybridMemory calls of a request (1 read, 2 writes): wall time (includes "
        "waiting for the GIL behind the worker's other threads) and CPU time.",
        "",
        "| senders | requests | seconds | throughput | p50 | p99 | memory wall p50 / p99 | "
        "memory CPU p50 / p99 | request CPU p50 | memory share | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['senders']} | {r['requests']} | {r['seconds']} | {r['throughput_rps']} req/s "
            f"| {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {r['memory_p50_ms']:.2f} / "
            f"{r['memory_p99_ms']:.2f} ms | {r['memory_cpu_p50_ms']:.2f} / "
            f"{r['memory_cpu_p99_ms']:.2f} ms | {r['request_cpu_p50_ms']:.1f} ms | "
            f"{100 * r['memory_share']:.1f} % | {r['errors']} |"
        )
    lines.append("")
    return {
        "levels": results,
        "warmup_errors": warm["errors"],
        "think_ms": think * 1e3,
        "workers": workers,
        "threads": threads,
        "markdown": "\n".join(lines) + "\n",
    }
