"""The README's first-run commands as a user types them: ``make run`` serves the app on
embedded servers under the data directory, says how to stop and reset, and stops on Ctrl-C
(SIGINT to the terminal's process group) with its servers; ``make reset`` is refused while the
servers are in use and erases the data afterwards. (The venv is taken as set up: ``-o``.)"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import requests

from lc_hybrid_memory.embedded import free_port

REPO = Path(__file__).resolve().parents[2]
MAKE = ["make", "--no-print-directory", "-o", ".venv/.installed"]
APP_SETTINGS = ("TWILIO_", "DATABASE_URL", "REDIS_", "MODEL_", "REPLY_MODE", "PUBLIC_BASE_URL")


def user_env(data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(APP_SETTINGS)}
    env.update(HYBRID_MEMORY_DATA_DIR=str(data_dir), PORT=str(port), RATE_LIMIT="")
    return env


def wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"make run not serving after 120 s:\n{log.read_text()}")


def test_make_run_serves_until_ctrl_c_and_make_reset_erases_the_data(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", free_port()
    env = user_env(data_dir, port)
    log = tmp_path / "make-run.log"
    with log.open("wb") as out:
        run = subprocess.Popen(
            [*MAKE, "run"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's foreground process group
        )  # fmt: skip
    try:
        wait_healthy(port, run, log)
        sent = subprocess.run(
            [".venv/bin/hybrid-memory", "send", "my name is Ada"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        assert "Ada" in sent.stdout
        refused = subprocess.run(
            [*MAKE, "reset"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
        assert refused.returncode != 0 and "in use" in refused.stderr
        assert (data_dir / "embedded.json").exists()

        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C
        run.wait(60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(10)
    output = log.read_text()
    assert "Ctrl-C stops it" in output and "make reset" in output
    assert not (data_dir / "embedded.json").exists()  # the servers stopped with it

    reset = subprocess.run(
        [*MAKE, "reset"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert reset.returncode == 0, reset.stderr
    assert not data_dir.exists()
