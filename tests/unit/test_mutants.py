"""The mutation catalogue stays in step with the code and the README, and the runner runs the
mutated copy, not the installed package (./dev mutants, tests/mutants)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.mutants import catalogue as cat
from tests.mutants.run import copy_checkout, loaded_from_copy, module_of, slot_environment


def test_every_mutant_applies_exactly_once_and_names_tests_the_readme_gives_its_row() -> None:
    assert cat.check(cat.load()) == []


def test_every_row_of_the_guarantee_table_has_an_id_and_the_tests_it_names() -> None:
    rows = cat.readme_rows(cat.README.read_text())
    table = cat.README.read_text().split("\n## Delivery guarantees", 1)[1].split("\n## ", 1)[0]
    assert len(rows) == sum(line.startswith("| ") for line in table.splitlines()) - 1
    assert all(tests for _, tests in rows.values())
    assert len(cat.load().mutants) >= 25


def test_a_readme_citation_covers_its_own_parameters_and_a_file_or_folder_covers_its_tests(
) -> None:
    named = "tests/integration/test_dispatch.py::test_a"
    assert cat.covers(named, named + "[sqlite]")
    assert not cat.covers(named, "tests/integration/test_dispatch.py::test_ab")
    assert cat.covers("tests/unit/test_decide.py", "tests/unit/test_decide.py::test_x[1]")
    assert not cat.covers("tests/unit/test_decide.py", "tests/unit/test_decide_more.py::t")
    assert cat.covers("tests/chaos", "tests/chaos/test_chaos.py::test_short")


def mutant(old: str, new: str = "x", file: str = "models/claims.py") -> cat.Mutant:
    return cat.Mutant("m", "sent-once", file, old, new, ("tests/unit",), "a test", False)


def test_a_mutant_whose_old_text_is_missing_or_ambiguous_is_refused_as_stale(
    tmp_path: Path,
) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "claims.py").write_text("a = 1\nb = 1\n")
    with pytest.raises(ValueError, match="found 0 times"):
        cat.apply(mutant("c = 1"), tmp_path)
    with pytest.raises(ValueError, match="found 2 times"):
        cat.apply(mutant(" = 1"), tmp_path)
    cat.apply(mutant("b = 1", "b = 2"), tmp_path)
    assert (tmp_path / "models" / "claims.py").read_text() == "a = 1\nb = 2\n"


def test_each_file_is_named_as_the_code_imports_it() -> None:
    assert module_of("models/claims.py") == "spotler_outbox.models.claims"
    assert module_of("worker/dispatch/__init__.py") == "spotler_outbox.worker.dispatch"
    assert module_of("spotler_outbox/dbapi.py") == "spotler_outbox.dbapi"
    assert module_of("tests/integration/workers.py") == "tests.integration.workers"
    assert module_of("README.md") is None


def test_two_slots_never_share_a_database_or_a_redis_database_with_each_other_or_xdist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_DB_NAME", "base")
    monkeypatch.setenv("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    slots = [slot_environment(n, tmp_path) for n in range(2)]
    assert [s["TEST_DB_NAME"] for s in slots] == ["base_mutant0", "base_mutant1"]
    # xdist's processes count down from 15 (15, 12, ...): the slots count up from 1.
    assert [s["TEST_REDIS_URL"] for s in slots] == ["redis://127.0.0.1:6379/1",
                                                   "redis://127.0.0.1:6379/2"]
    assert all(s["PYTHONPATH"].split(":")[0] == str(tmp_path) for s in slots)


def test_the_copy_is_what_python_imports_despite_the_editable_install(tmp_path: Path) -> None:
    copy = tmp_path / "checkout"
    copy_checkout(copy)
    assert (copy / "spotler_outbox" / "models").is_symlink()
    claims = mutant("from __future__ import annotations\n",
                    "from __future__ import annotations\nMUTATED = True\n")
    cat.apply(claims, copy)
    env = slot_environment(0, copy)
    assert loaded_from_copy(claims, copy, env) is None
    probe = "import spotler_outbox.models.claims as c; print(c.MUTATED)"
    ran = subprocess.run([sys.executable, "-P", "-c", probe], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=False)
    assert ran.stdout.strip() == "True", ran.stderr
    # Without the copy on the path the editable install's original answers.
    assert loaded_from_copy(claims, copy, {**env, "PYTHONPATH": ""}) is not None
