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
# Read by Flower itself, and by the compose file for the migrate service, never by our Python.
COMPOSE_ONLY_ENV = {"FLOWER_BASIC_AUTH", "OUTBOX_MIGRATE_DATABASE_URL"}
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


def test_every_variable_compose_reads_is_a_setting_or_a_compose_only_one() -> None:
    substituted = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_TEXT))
    given = set().union(*(environment_names(s) for s in ours().values()))
    unknown = (substituted | given) - SETTINGS_ENV - COMPOSE_ONLY_ENV
    assert not unknown, f"docker-compose.yml reads variables nothing defines: {sorted(unknown)}"


def test_every_variable_compose_substitutes_is_in_env_example() -> None:
    # `${NAME}` is filled from .env, which users make from .env.example.
    example = (ROOT / ".env.example").read_text()
    for name in set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_TEXT)):
        assert re.search(rf"^{name}=", example, re.M), f"{name} missing from .env.example"


def test_no_database_or_redis_port_is_published_and_every_published_port_is_on_loopback() -> None:
    # A shop's own PostgreSQL, MySQL or Redis (Magento keeps Redis on 6379) listens there.
    assert "ports" not in SERVICES["postgres"] and "ports" not in SERVICES["redis"]
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_the_bundled_postgresql_runs_only_in_the_demo_profile_and_nothing_requires_it() -> None:
    assert SERVICES["postgres"]["profiles"] == ["demo"]
    for name, service in SERVICES.items():
        needs = service.get("depends_on", {})
        if isinstance(needs, dict) and "postgres" in needs:
            assert needs["postgres"].get("required") is False, name


def test_every_service_of_the_image_reaches_the_host_as_host_docker_internal() -> None:
    for name, service in ours().items():
        if service.get("network_mode", "").startswith("service:"):
            continue  # shares another service's network, and its hosts
        assert "host.docker.internal:host-gateway" in service.get("extra_hosts", []), name


@pytest.mark.parametrize("name", ["worker", "flower"])
def test_the_worker_and_flower_have_healthchecks(name: str) -> None:
    check = SERVICES[name]["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL") and check["interval"]


def test_no_beat_runs_the_sweeper_is_inside_the_worker() -> None:
    assert not [name for name, s in ours().items() if command(s)[3:4] == ["beat"]]


def test_no_command_line_carries_a_credential() -> None:
    for name, service in SERVICES.items():
        line = " ".join(command(service))
        for secret in ("--basic-auth", "--api-key", "--account", "SPOTLER_API_KEY",
                       "FLOWER_BASIC_AUTH", "PASSWORD"):
            assert secret not in line, f"{name}'s command line carries {secret}"
    assert SERVICES["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith(
        "${FLOWER_BASIC_AUTH:?")
