"""The distributions as users get them (``make package-test``; not in ``make test``).

``python -m build`` makes the library's sdist and wheel (the wheel built from the sdist, so the
sdist is complete) and the app's wheel; setuptools must not warn. The library's wheel goes into
a fresh venv with the extras the README installs — which is what ``pip install
".[embedded,langgraph]"`` does — and the README's program runs there, outside the repository:
the quick start on embedded servers, both agent wirings. Nothing of the app comes with it. Then
the app's wheel goes into the same venv, as the Dockerfile installs it (``pip install .
./app``): its ``hybrid-memory`` command works and its packaged Alembic migrations run, through
``hybrid-memory migrate`` and through the packaged ``alembic.ini``.

Dependencies come from the package index through pip's cache (the project's venv had to fetch
them already); builds run without isolation, on the venv's setuptools and ``build``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from lc_hybrid_memory import sync_url
from lc_hybrid_memory.testing import ServerURLs
from tests.support import readme

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
WARNING = re.compile(r"\w*Warning\b|deprecat", re.IGNORECASE)
NOT_WARNINGS = re.compile(r"^warning: \w+: byte-compiling is disabled", re.IGNORECASE)


@dataclass(frozen=True)
class Built:
    sdist: Path
    wheel: Path
    app_wheel: Path
    log: str


def run(args: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=600, **kwargs
    )  # type: ignore[call-overload]
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
    return result


def outside_env() -> dict[str, str]:
    """The environment of a user's shell: nothing pointing into this repository or its venv."""
    return {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "VIRTUAL_ENV") and not key.startswith("TEST_")
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    out = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "build", "--no-isolation"]
    library = run([*build, "--outdir", out / "library", REPO])
    # The app builds from a copy of its folder: an in-tree build would leave build/ and
    # *.egg-info inside the package folder.
    source = out / "app-source"
    shutil.copytree(
        REPO / "app", source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    )
    app = run([*build, "--wheel", "--outdir", out / "app", source])
    [sdist] = (out / "library").glob("*.tar.gz")
    [wheel] = (out / "library").glob("*.whl")
    [app_wheel] = (out / "app").glob("*.whl")
    log = "\n".join([library.stdout, library.stderr, app.stdout, app.stderr])
    return Built(sdist, wheel, app_wheel, log)


def test_setuptools_does_not_warn(built: Built) -> None:
    warnings = [
        line
        for line in built.log.splitlines()
        if WARNING.search(line) and not NOT_WARNINGS.match(line)
    ]
    assert warnings == []


def test_the_library_distributions_hold_the_library_only(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as wheel:
        names = wheel.namelist()
        metadata = wheel.read("lc_hybrid_memory-0.1.0.dist-info/METADATA").decode()
    assert {name.split("/")[0] for name in names} == {
        "lc_hybrid_memory",
        "lc_hybrid_memory-0.1.0.dist-info",
    }
    assert not [name for name in names if name.endswith("entry_points.txt")]  # no command
    for module in ("py.typed", "testing.py", "langgraph.py", "embedded/__main__.py"):
        assert f"lc_hybrid_memory/{module}" in names
    assert "License-Expression: MIT" in metadata
    extras = set(re.findall(r"^Provides-Extra: (.+)$", metadata, flags=re.M))
    assert extras == {"embedded", "langgraph", "prometheus", "recall"}
    assert not re.search(r"^Requires-Dist: (flask|twilio|rq|gunicorn)", metadata, re.M | re.I)

    with tarfile.open(built.sdist) as sdist:
        members = [name.split("/", 1)[1] for name in sdist.getnames() if "/" in name]
    tops = {member.split("/")[0] for member in members}
    assert tops == {
        "PKG-INFO",
        "README.md",
        "pyproject.toml",
        "setup.cfg",
        "lc_hybrid_memory",
        "lc_hybrid_memory.egg-info",
    }


def test_the_app_wheel_holds_the_app_its_migrations_assets_and_command(built: Built) -> None:
    with zipfile.ZipFile(built.app_wheel) as wheel:
        names = set(wheel.namelist())
        info = "lc_hybrid_memory_app-0.1.0.dist-info"
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
        metadata = wheel.read(f"{info}/METADATA").decode()
    assert {name.split("/")[0] for name in names} == {"app", info}
    on_disk = {  # the whole app folder: modules, migrations, alembic.ini, templates, assets
        f"app/{path.relative_to(REPO / 'app').as_posix()}"
        for path in (REPO / "app").rglob("*")
        if path.is_file()
        and path.name != "pyproject.toml"
        and not any(part == "__pycache__" or part.endswith(".egg-info") for part in path.parts)
    }
    assert {name for name in names if name.startswith("app/")} == on_disk
    assert {"app/alembic.ini", "app/migrations/env.py", "app/templates/console/base.html"} <= names
    assert "hybrid-memory = app.cli:main" in entry_points
    assert "Requires-Dist: lc-hybrid-memory[langgraph,prometheus]==0.1.0" in metadata


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv without pip; this venv's pip installs into it (``pip --python``)."""
    path = tmp_path_factory.mktemp("fresh") / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", path])
    return path


def pip_install(venv: Path, *requirements: str | Path) -> None:
    pip = [sys.executable, "-m", "pip", "--python", venv / "bin" / "python"]
    run([*pip, "install", "--disable-pip-version-check", "--progress-bar", "off", *requirements])
    run([*pip, "check"])


def installed(venv: Path, cwd: Path, *modules: str) -> dict[str, str | None]:
    """Where each module is imported from in ``venv`` (None: not importable)."""
    code = (
        "import importlib.util, json, sys\n"
        "specs = {name: importlib.util.find_spec(name) for name in sys.argv[1:]}\n"
        "where = {n: (s.origin or 'namespace') if s else None for n, s in specs.items()}\n"
        "print(json.dumps(where))\n"
    )
    result = run([venv / "bin" / "python", "-c", code, *modules], cwd=cwd, env=outside_env())
    return json.loads(result.stdout)


def test_the_wheel_in_a_fresh_venv_runs_the_readme_then_takes_the_app(
    built: Built, venv: Path, tmp_path: Path, servers: ServerURLs, fresh_database_url: str
) -> None:
    pip_install(venv, f"{built.wheel}[embedded,langgraph]")
    where = installed(venv, tmp_path, "lc_hybrid_memory", "langgraph", "app", "flask", "twilio")
    assert str(where["lc_hybrid_memory"]).startswith(str(venv))
    assert where["langgraph"] is not None
    assert where["app"] is None and where["flask"] is None and where["twilio"] is None
    assert not (venv / "bin" / "hybrid-memory").exists()

    script = tmp_path / "readme_program.py"
    script.write_text(readme.program())
    result = subprocess.run(
        [venv / "bin" / "python", script],
        cwd=tmp_path,
        env=outside_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    readme.check_run(result.stdout)

    # The app's wheel on top, as the Docker image installs it.
    pip_install(venv, built.app_wheel)
    env = {**outside_env(), "DATABASE_URL": fresh_database_url, "REDIS_URL": servers.redis_url}
    help_text = run([venv / "bin" / "hybrid-memory", "--help"], cwd=tmp_path, env=env).stdout
    assert "migrate" in help_text and "serve" in help_text
    run([venv / "bin" / "hybrid-memory", "migrate"], cwd=tmp_path, env=env)
    engine = sa.create_engine(sync_url(fresh_database_url))
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"conversations", "messages", "alembic_version"} <= tables
    app_dir = Path(str(installed(venv, tmp_path, "app")["app"])).parent
    alembic_ini = app_dir / "alembic.ini"
    current = run([venv / "bin" / "alembic", "-c", alembic_ini, "current"], cwd=tmp_path, env=env)
    assert "(head)" in current.stdout + current.stderr
