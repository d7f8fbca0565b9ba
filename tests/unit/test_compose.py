"""docker-compose.yml runs only commands that exist and reads only variables that are documented."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from spotler_outbox.models.settings import Settings
from spotler_outbox.worker.console.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
SETTINGS_ENV = {f.metadata["env"] for f in fields(Settings)}
# Read by the flower service's command line only, never by Python.
COMPOSE_ONLY_ENV = {"FLOWER_BASIC_AUTH"}
CELERY_ROLES = {"worker", "beat", "flower"}
OUR_IMAGE = "spotler-outbox:latest"


def command(service: dict[str, Any]) -> list[str]:
    value = service.get("command", [])
    return value.split() if isinstance(value, str) else [str(part) for part in value]


def ours() -> dict[str, dict[str, Any]]:
    """The services that run this project's image (through the x-outbox anchor)."""
    return {name: s for name, s in SERVICES.items() if s.get("image") == OUR_IMAGE}


def test_every_service_of_the_project_image_runs_spotler_outbox_or_celery() -> None:
    assert ours(), "no service runs the spotler-outbox image"
    for name, service in ours().items():
        assert command(service)[:1] in (["spotler-outbox"], ["celery"]), name


@pytest.mark.parametrize("name", sorted(n for n, s in ours().items()
                                        if command(s)[:1] == ["spotler-outbox"]))
def test_every_spotler_outbox_command_parses_with_the_cli_parser(name: str) -> None:
    argv = command(SERVICES[name])[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{name}: `spotler-outbox {' '.join(argv)}` is refused by the CLI ({e})")
    assert args.command == argv[0]


@pytest.mark.parametrize("name", sorted(n for n, s in ours().items()
                                        if command(s)[:1] == ["celery"]))
def test_every_celery_command_runs_the_worker_app_as_worker_beat_or_flower(name: str) -> None:
    argv = command(SERVICES[name])
    assert argv[1:3] == ["-A", "spotler_outbox.worker"], f"{name}: {argv}"
    assert argv[3] in CELERY_ROLES, f"{name}: {argv[3]!r} is not one of {sorted(CELERY_ROLES)}"


def test_the_metrics_service_publishes_the_exporter_on_loopback_only() -> None:
    metrics = SERVICES["metrics"]
    assert command(metrics)[:2] == ["spotler-outbox", "metrics"]
    assert metrics["ports"] == ["127.0.0.1:9808:9808"]


def environment_names(service: dict[str, Any]) -> set[str]:
    env = service.get("environment", {})
    if isinstance(env, dict):
        return set(env)
    return {str(item).split("=", 1)[0] for item in env}


def test_every_variable_compose_reads_is_a_setting_or_flower_basic_auth() -> None:
    substituted = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_TEXT))
    given = set().union(*(environment_names(s) for s in ours().values()))
    unknown = (substituted | given) - SETTINGS_ENV - COMPOSE_ONLY_ENV
    assert not unknown, f"docker-compose.yml reads variables nothing defines: {sorted(unknown)}"


def test_every_variable_compose_substitutes_is_in_env_example() -> None:
    # `${NAME}` is filled from .env, which users make from .env.example.
    example = (ROOT / ".env.example").read_text()
    for name in set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_TEXT)):
        assert re.search(rf"^{name}=", example, re.M), f"{name} missing from .env.example"
