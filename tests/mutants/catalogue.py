"""The mutation catalogue (catalogue.toml) and its agreement with the README's guarantee table.

Each mutant is one careless edit of the code behind one guarantee, kept as (file, exact old
text, new text), with the tests that must fail once it is made. A mutant is only worth
something while it still applies: `check` refuses one whose old text is not found exactly
once, a test that is not defined, or a test the README does not name for that row.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = Path(__file__).with_name("catalogue.toml")
README = ROOT / "README.md"
_ID = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_CITED = re.compile(r"`([^`]*test_[^`]*|tests/[^`]*)`")


@dataclass(frozen=True)
class Mutant:
    id: str
    row: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    models: str  # the careless refactor it stands for
    fast: bool  # the one mutant of its row in the --fast subset


@dataclass(frozen=True)
class Row:
    id: str
    guarantee: str  # the README's words
    tests: tuple[str, ...]  # what the README names: node ids, files or folders
    pending: str | None  # why no mutant yet, if none


@dataclass(frozen=True)
class Catalogue:
    rows: dict[str, Row]
    mutants: list[Mutant]


def load(path: Path = CATALOGUE, readme: Path = README) -> Catalogue:
    data = tomllib.loads(path.read_text())
    table = readme_rows(readme.read_text())
    pending = {str(k): str(v) for k, v in data.get("pending", {}).items()}
    rows = {row_id: Row(row_id, guarantee, tests, pending.get(row_id))
            for row_id, (guarantee, tests) in table.items()}
    mutants = [Mutant(id=str(m["id"]), row=str(m["row"]), file=str(m["file"]),
                      old=str(m["old"]), new=str(m["new"]),
                      tests=tuple(str(t) for t in m["tests"]), models=str(m["models"]),
                      fast=bool(m.get("fast", False)))
               for m in data.get("mutant", [])]
    return Catalogue(rows, mutants)


def readme_rows(readme: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """The guarantee table's rows by their id (third column): (guarantee, tests named)."""
    section = readme.split("\n## Delivery guarantees", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if not line.startswith("| ") or len(cells) != 3 or not cells[2].startswith("`"):
            continue
        row_id = cells[2].strip("`")
        tests = tuple(_node(t) for t in _CITED.findall(cells[1]))
        rows[row_id] = (cells[0], tests)
    return rows


def _node(cited: str) -> str:
    """A README citation as a pytest path: `tests/integration/` unless a path says otherwise."""
    return cited if cited.startswith("tests/") else "tests/integration/" + cited


def covers(named: str, test: str) -> bool:
    """Whether the README's `named` (node id, file or folder) names the catalogue's `test`."""
    function = test.split("[", 1)[0]
    if function == named:
        return True
    if named.endswith(".py"):
        return function.startswith(named + "::")
    return "::" not in named and function.startswith(named.rstrip("/") + "/")


def check(catalogue: Catalogue, root: Path = ROOT) -> list[str]:
    """Every way the catalogue has drifted from the code, the tests or the README."""
    problems: list[str] = []
    seen: set[str] = set()
    for m in catalogue.mutants:
        where = f"mutant {m.id}"
        if not _ID.match(m.id) or m.id in seen:
            problems.append(f"{where}: ids are unique, lower-case words joined by -")
        seen.add(m.id)
        problems += [f"{where}: {p}" for p in _applies(m, root)]
        row = catalogue.rows.get(m.row)
        if row is None:
            problems.append(f"{where}: no row `{m.row}` in the README's guarantee table")
            continue
        for test in m.tests or ("(none)",):
            if not any(covers(named, test) for named in row.tests):
                problems.append(f"{where}: {test} is not a test the README names for "
                                f"row {m.row}")
            elif not _defined(root, test):
                problems.append(f"{where}: {test} is not defined")
    for row in catalogue.rows.values():
        mutants = [m for m in catalogue.mutants if m.row == row.id]
        fast = [m.id for m in mutants if m.fast]
        if not mutants and not row.pending:
            problems.append(f"row {row.id}: no mutant breaks it")
        if mutants and len(fast) != 1:
            problems.append(f"row {row.id}: {len(fast)} mutants marked fast, not one")
    return problems


def _applies(m: Mutant, root: Path) -> list[str]:
    path = root / m.file
    if not path.is_file():
        return [f"{m.file} does not exist"]
    found = path.read_text().count(m.old)
    if m.old == m.new or not m.old:
        return ["old and new must differ, and old must not be empty"]
    if found != 1:
        return [f"its old text is found {found} times in {m.file}, not once: the catalogue "
                "is out of step with the code"]
    return []


def _defined(root: Path, test: str) -> bool:
    path, _, name = test.split("[", 1)[0].partition("::")
    file = root / path
    if not name:
        return file.exists()
    return file.is_file() and re.search(rf"^\s*(async )?def {re.escape(name)}\(",
                                        file.read_text(), re.M) is not None


def apply(m: Mutant, root: Path) -> None:
    """Make the mutant's edit in the copy at `root`; refuses loudly unless it applies once."""
    problems = _applies(m, root)
    if problems:
        raise ValueError(f"mutant {m.id}: {problems[0]}")
    path = root / m.file
    path.write_text(path.read_text().replace(m.old, m.new))
