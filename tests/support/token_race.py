"""A child process of the dev-token race test: at each barrier, read-or-create the dev token of
one fresh data directory, as ``serve``, ``worker`` and gunicorn's workers do at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def race_for_tokens(data_dirs: list[str], barrier: Any, results: Any) -> None:
    from app.settings import Settings
    from app.webhook_auth import webhook_auth_token

    for data_dir in data_dirs:
        barrier.wait(timeout=60)
        try:
            token = webhook_auth_token(Settings(data_dir=Path(data_dir)))
        except Exception as exc:  # reported to the test, which fails on it
            token = f"error: {type(exc).__name__}: {exc}"
        results.put((data_dir, token))
