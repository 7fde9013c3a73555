"""The two distributions' declared contents match the tree (fast; the built wheels are checked
in ``test_distributions.py``): every package of ``app/`` and every data file it ships is listed
in ``app/pyproject.toml``, and the library's distribution is the ``lc_hybrid_memory`` package
only."""

from __future__ import annotations

import glob
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "app"
SKIPPED = {"__pycache__", "build", "dist"}


def app_config() -> dict:
    return tomllib.loads((APP / "pyproject.toml").read_text())


def app_files() -> list[Path]:
    return [
        path
        for path in APP.rglob("*")
        if path.is_file()
        and not any(part in SKIPPED or part.endswith(".egg-info") for part in path.parts)
    ]


def test_every_app_folder_with_files_is_a_listed_package() -> None:
    setuptools = app_config()["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"app": "."}
    folders = {path.parent for path in app_files() if path.name != "pyproject.toml"}
    names = {".".join(("app", *folder.relative_to(APP).parts)) for folder in folders}
    assert names == set(setuptools["packages"])


def test_every_app_data_file_is_shipped() -> None:
    setuptools = app_config()["tool"]["setuptools"]
    shipped: set[Path] = set()
    for package, patterns in setuptools["package-data"].items():
        root = APP.joinpath(*package.split(".")[1:])
        for pattern in patterns:
            shipped |= {root / p for p in glob.glob(pattern, root_dir=root, recursive=True)}
    data = {
        p for p in app_files() if p.suffix not in (".py", ".pyc") and p.name != "pyproject.toml"
    }
    assert data - shipped == set()


def test_the_library_distribution_is_the_library_package_only() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = config["project"]
    assert "scripts" not in project and "entry-points" not in project
    assert config["tool"]["setuptools"]["packages"]["find"]["include"] == [
        "lc_hybrid_memory",
        "lc_hybrid_memory.*",
    ]
    assert isinstance(project["license"], str)  # an SPDX expression, as setuptools wants now
    extras = project["optional-dependencies"]
    assert {"embedded", "langgraph", "prometheus", "recall"} <= set(extras)
    web = ("flask", "twilio", "rq", "gunicorn")
    assert not [req for reqs in extras.values() for req in reqs if req.startswith(web)]


def test_the_image_and_compose_match_the_distributions_and_settings() -> None:
    """No Docker engine here: the files are read against the code."""
    import re

    import yaml

    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY lc_hybrid_memory ./lc_hybrid_memory" in dockerfile
    assert "COPY app ./app" in dockerfile
    assert re.search(r'pip install \. "\./app\$\{EXTRAS:\+\[\$\{EXTRAS\}\]\}"', dockerfile)
    assert 'CMD ["hybrid-memory", "serve", "--production"' in dockerfile
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    app_source = "\n".join(path.read_text() for path in APP.glob("*.py"))
    app_services = {n: svc for n, svc in compose["services"].items() if "build" in svc}
    assert set(app_services) == {"migrate", "app", "worker"}
    for name, service in app_services.items():
        for variable in service.get("environment", {}):
            # each one the app reads (a provider's API key is read by its LangChain package)
            assert f'"{variable}"' in app_source or variable.endswith("_API_KEY"), (name, variable)
        command = service.get("command", [])
        if command and command[0] == "hybrid-memory":
            assert f'"{command[1]}"' in app_source  # a command of the CLI
    extras = app_config()["project"]["optional-dependencies"]
    assert {"openai", "anthropic", "ollama"} <= set(extras)  # what EXTRAS may name
