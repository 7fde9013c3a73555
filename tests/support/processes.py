"""The app as separate processes, for the scale-out and worker-crash tests: `hybrid-memory serve
--production` (gunicorn) instances and `hybrid-memory worker` processes on the test servers, and
a loopback HTTP server that stands in for the Twilio REST API (``TWILIO_API_BASE_URL``) and
records every reply the workers send.

Every process runs in its own session (process group) and is killed with its children when the
test ends, whatever happens; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
import requests
from rq import Queue

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TwilioCapture:
    """A stand-in for ``https://api.twilio.com`` on loopback: answers ``POST .../Messages.json``
    like the API (201 and a message resource) and records each call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                with capture.lock:
                    capture.calls.append(
                        {
                            "path": self.path,
                            "form": form,
                            "auth": self.headers.get("Authorization", ""),
                            "at": time.monotonic(),
                        }
                    )
                body = json.dumps(
                    {
                        "sid": f"SM{uuid.uuid4().hex}",
                        "status": "queued",
                        "to": form.get("To"),
                        "from": form.get("From"),
                        "body": form.get("Body"),
                    }
                ).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> TwilioCapture:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def bodies(self) -> list[str]:
        with self.lock:
            return [call["form"].get("Body", "") for call in self.calls]


class AppProcess:
    """One ``python -m app.cli ...`` process in its own process group, logging to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            cwd=REPO,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (gunicorn's master and workers alike)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, grace: float = 5.0) -> None:
        if self.alive() and grace > 0:
            self.kill(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        self.kill(signal.SIGKILL)  # stragglers of the group, even if the leader exited
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.log.close()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class ProcessGroup:
    """The processes of one test; all stopped at the end (a fixture's finalizer calls stop)."""

    def __init__(self, base_env: dict[str, str], log_dir: Path) -> None:
        self.base_env = base_env
        self.log_dir = log_dir
        self.procs: list[AppProcess] = []

    def start(self, name: str, args: list[str], **env: str) -> AppProcess:
        proc = AppProcess(name, args, {**self.base_env, **env}, self.log_dir)
        self.procs.append(proc)
        return proc

    def serve(self, name: str, port: int, workers: int = 2, **env: str) -> AppProcess:
        args = ["serve", "--production", "--host", "127.0.0.1", "--port", str(port)]
        return self.start(name, [*args, "--workers", str(workers)], **env)

    def worker(self, name: str, **env: str) -> AppProcess:
        return self.start(name, ["worker"], **env)

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM every process at once, SIGKILL what is left after ``grace`` seconds."""
        for proc in self.procs:
            if proc.alive():
                proc.kill(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.proc.wait(max(0.0, deadline - time.monotonic()))
        for proc in self.procs:
            proc.stop(grace=0)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} (pid {p.pid}) ---\n{p.tail()}" for p in self.procs)


def wait_healthy(base_url: str, proc: AppProcess, timeout: float = 90.0) -> None:
    """Until ``GET /healthz`` answers 200 (bounded; fails fast if the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited:\n{proc.tail()}")
        try:
            if requests.get(base_url + "/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{proc.name} not healthy after {timeout} s:\n{proc.tail()}")


def wait_until(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def app_env(
    *,
    database_url: str,
    redis_url: str,
    prefix: str,
    queue: str,
    twilio_api: str,
    data_dir: Path,
    auth_token: str,
    account_sid: str,
    public_base_url: str,
    **extra: str,
) -> dict[str, str]:
    """The environment of an app or worker process on the test servers."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TWILIO_", "REDIS_", "DATABASE_", "RQ_", "MODEL_", "OPENAI_"))
    }
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=prefix,
        RQ_QUEUE=queue,
        TWILIO_API_BASE_URL=twilio_api,
        TWILIO_AUTH_TOKEN=auth_token,
        TWILIO_ACCOUNT_SID=account_sid,
        PUBLIC_BASE_URL=public_base_url,
        HYBRID_MEMORY_DATA_DIR=str(data_dir),
        REPLY_MODE="async",
        MODEL_PROVIDER="offline",
        AUTO_MIGRATE="false",
        RATE_LIMIT="",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def cleanup_redis(redis_url: str, prefix: str, queue_name: str) -> None:
    """Remove the test's app keys and RQ queue, jobs and registries."""
    client = redis.Redis.from_url(redis_url)
    try:
        queue = Queue(queue_name, connection=client)
        for registry in (
            queue.failed_job_registry,
            queue.scheduled_job_registry,
            queue.finished_job_registry,
        ):
            for job_id in registry.get_job_ids():
                registry.remove(job_id, delete_job=True)
        # Jobs of killed workers stay "started"; that registry cannot remove entries itself.
        started = queue.started_job_registry
        for job_id in started.get_job_ids():
            client.delete(f"rq:job:{job_id}")
        client.delete(started.key)
        queue.delete(delete_jobs=True)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
