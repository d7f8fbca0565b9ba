"""The Dockerfile installs the dependencies in a layer before the code and has a health check."""

from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE = ("spotler_outbox", "models", "worker", "migrations")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments left out."""
    joined = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    result = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def index_of(predicate: Callable[[tuple[str, str]], bool]) -> int:
    return next(i for i, step in enumerate(instructions()) if predicate(step))


def test_the_dependencies_are_installed_before_any_code_is_copied() -> None:
    steps = instructions()
    install_deps = index_of(lambda s: s[0] == "RUN" and "-r /tmp/requirements.txt" in s[1])
    first_code = index_of(lambda s: s[0] == "COPY" and s[1].split()[0] in CODE)
    assert install_deps < first_code
    copied_before = [s[1].split()[:-1] for s in steps[:install_deps] if s[0] == "COPY"]
    assert copied_before == [["pyproject.toml"]]
    install_code = [s[1] for s in steps[first_code:] if s[0] == "RUN" and "pip install" in s[1]]
    assert install_code and all("--no-deps" in run for run in install_code)


def test_the_dependency_layer_lists_the_runtime_and_its_three_extras_without_test_tools(
    tmp_path: Path,
) -> None:
    run = next(s[1] for s in instructions() if s[0] == "RUN" and "tomllib" in s[1])
    words = shlex.split(run.split(">", 1)[0])
    program = words[words.index("-c") + 1]
    shutil.copy(ROOT / "pyproject.toml", tmp_path)

    listed = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True,
                            text=True, check=True).stdout.split()

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert sorted(listed) == sorted(project["dependencies"] + extras["postgres"]
                                    + extras["mariadb"] + extras["ops"])
    assert not [d for d in listed if d.split(">")[0] in ("pytest", "mypy", "ruff", "hypothesis")]


def test_the_health_check_runs_a_module_that_exists() -> None:
    check = next(s[1] for s in instructions() if s[0] == "HEALTHCHECK")
    command = check.split("CMD", 1)[1].strip()
    argv = json.loads(command)
    assert argv[:2] == ["python", "-m"]
    assert importlib.util.find_spec(argv[2]) is not None
    assert "--interval=" in check and "--timeout=" in check
