"""docker-compose.yml is checked by parsing (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from moodwire.cli import build_parser
from moodwire.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_compose_runs_kafka_in_kraft_mode_with_postgres_and_workers() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "postgres", "worker", "learner", "dashboard"} <= set(services)
    kafka_env = services["kafka"]["environment"]
    assert (
        "broker" in kafka_env["KAFKA_PROCESS_ROLES"]
        and "controller" in kafka_env["KAFKA_PROCESS_ROLES"]
    )
    assert kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for name in ("worker", "learner", "dashboard"):
        env = services[name]["environment"]
        fields = set(Settings.model_fields)
        for key in env:
            head = key[len("MOODWIRE_") :].lower().split("__")[0]
            assert key.startswith("MOODWIRE_") and head in fields, key
    # Every environment the services get builds valid settings.
    for name in ("worker", "learner", "dashboard"):
        with pytest.MonkeyPatch.context() as mp:
            for key, value in services[name]["environment"].items():
                # As compose does with the variable unset: ${VAR:-default} -> default.
                mp.setenv(key, re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value)))
            Settings()
    # The services' commands are real CLI commands.
    build_parser().parse_args(services["worker"]["command"])
    build_parser().parse_args(services["learner"]["command"])
    build_parser().parse_args(services["dashboard"]["command"])
    assert (ROOT / "Dockerfile").is_file()


def test_the_image_holds_every_package_and_file_the_build_needs() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            copied.update(line.split()[1:-1])
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    assert sorted(p for p in packages if p not in copied) == []
    needed = {"pyproject.toml", project["project"]["readme"], *project["project"]["license-files"]}
    assert sorted(needed - copied) == []
    # Every top-level package of ours is one the build includes.
    ours = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert sorted(ours - set(packages)) == []
