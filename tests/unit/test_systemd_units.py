"""The systemd units in ops/systemd run real entry points with options those accept."""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from flower.options import options as flower_options

from spotler_outbox.worker.console.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "ops" / "systemd").glob("*.service"))
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
VENV_BIN = "/opt/spotler-outbox/venv/bin/"


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def exec_start(path: Path) -> list[str]:
    # systemd fills ${NAME} from the EnvironmentFile; a placeholder stands in for parsing.
    line = re.sub(r"\$\{[A-Z_]+\}", "user:password", unit(path)["Service"]["ExecStart"])
    return shlex.split(line)


def role(path: Path) -> str:
    argv = exec_start(path)
    return argv[3] if Path(argv[0]).name == "celery" else argv[1]


def test_there_is_a_unit_for_every_long_running_compose_service() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    long_running = {
        (s["command"][3] if s["command"][0] == "celery" else s["command"][1])
        for name, s in compose.items()
        if s.get("image") == "spotler-outbox:latest" and name not in ("migrate", "fake-api")}
    assert {role(path) for path in UNITS} == long_running


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_each_unit_runs_a_console_script_of_the_venv_restarts_and_reads_the_env_file(
    path: Path,
) -> None:
    service = unit(path)["Service"]
    program = exec_start(path)[0]
    assert program.startswith(VENV_BIN)
    assert Path(program).name in {"celery", *SCRIPTS}
    assert service["Restart"] == "always"
    assert service["EnvironmentFile"] == "/etc/spotler-outbox/env"
    assert service["User"] == "spotler-outbox"
    assert unit(path)["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize("path", [p for p in UNITS if Path(exec_start(p)[0]).name in SCRIPTS],
                         ids=lambda p: p.name)
def test_each_spotler_outbox_unit_names_a_subcommand_the_cli_accepts(path: Path) -> None:
    argv = exec_start(path)[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"`spotler-outbox {' '.join(argv)}` is refused by the CLI ({e})")
    assert args.command == argv[0]


@pytest.mark.parametrize("path", [p for p in UNITS if Path(exec_start(p)[0]).name == "celery"],
                         ids=lambda p: p.name)
def test_each_celery_unit_runs_the_worker_app_with_options_its_command_knows(path: Path) -> None:
    argv = exec_start(path)
    assert argv[1:3] == ["-A", "spotler_outbox.worker"]
    flags = {a.split("=", 1)[0] for a in argv[4:] if a.startswith("--")}
    if argv[3] == "flower":  # Flower passes its options to tornado; they are defined there
        known = {f"--{name}" for name in flower_options._options}
    else:
        result = subprocess.run([sys.executable, "-m", "celery", *argv[1:4], "--help"],
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        known = set(re.findall(r"--[a-z][a-z-]*", result.stdout))
    assert flags <= known, f"{path.name}: unknown options {flags - known}"


def test_the_worker_gets_longer_to_stop_than_a_request_takes_and_stops_as_a_group() -> None:
    service = unit(ROOT / "ops" / "systemd" / "spotler-outbox-worker.service")["Service"]
    assert int(service["TimeoutStopSec"]) >= 60  # 5 s connect + 30 s read, the defaults
    assert (service["KillMode"], service["KillSignal"]) == ("control-group", "SIGTERM")


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_no_unit_puts_a_setting_of_the_env_file_on_its_command_line(path: Path) -> None:
    """${NAME} on ExecStart shows the value in `ps` and `systemctl status`: the programs read
    their settings (Flower its FLOWER_BASIC_AUTH) from the environment the file gives them."""
    assert "$" not in unit(path)["Service"]["ExecStart"]

