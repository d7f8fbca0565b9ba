"""`./dev mutants`: break each guarantee as catalogue.toml says, and see its tests fail.

Each mutant runs in a scratch copy of the checkout (the files git knows, as they are in the
working tree), with its one edit made, under `python -m pytest -x` on the tests it names. The
copy comes first on PYTHONPATH, ahead of the editable install, and before the tests run the
mutated module is imported once to prove the copy's file is the one Python loads: the tests'
Celery workers start with the copy as their working directory, so they run it too.

Mutants run in parallel (--jobs) the way `./dev test` runs its two processes: each slot has
databases and a Redis database of its own, derived from TEST_DB_NAME and TEST_REDIS_URL.

Exit status: 0 when every mutant was killed (one of its tests failed); 1 when one survived,
could not be judged, or the catalogue is out of step with the code, the tests or the README.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.mutants.catalogue import CATALOGUE, ROOT, Catalogue, Mutant, apply, check, load

# Redis databases 0 (the default broker) and 13-14 (the benchmarks') are never used; xdist's
# processes count down from TEST_REDIS_URL's, the slots here count up from 1.
_RESERVED_REDIS = (0, 13, 14)


@dataclass(frozen=True)
class Outcome:
    mutant: Mutant
    verdict: str  # killed, survived, error
    seconds: float
    detail: str  # the test that failed, or what went wrong


def slot_environment(slot: int, copy: Path) -> dict[str, str]:
    """The environment of one slot's pytest: its own databases, its own Redis database, and
    the copy ahead of the installed package."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_XDIST_WORKER", "_SPOTLER_TEST_NAMES_SET", "PYTEST_ADDOPTS")}
    base = os.environ.get("TEST_DB_NAME", "spotler_outbox_test")
    env["TEST_DB_NAME"] = f"{base}_mutant{slot}"
    redis_url = make_url(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
    top = int(redis_url.database or 15)
    free = [d % 16 for d in range(top, top - 16, -1) if d % 16 not in _RESERVED_REDIS]
    env["TEST_REDIS_URL"] = redis_url.set(database=str(free[-1 - slot])).render_as_string(
        hide_password=False)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(copy), os.environ.get("PYTHONPATH"))
                                        if p)
    return env


def copy_checkout(dest: Path, source: Path = ROOT) -> None:
    """The files git knows (tracked, or new and not ignored), as the working tree has them;
    links stay links, so spotler_outbox/models -> ../models works in the copy."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=source,
        capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, listed):
        src, dst = source / os.fsdecode(name), dest / os.fsdecode(name)
        if not src.is_symlink() and not src.exists():
            continue  # deleted in the working tree, not yet in the index
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)


def module_of(file: str) -> str | None:
    """The import name of a mutated Python file, as the code imports it."""
    if not file.endswith(".py"):
        return None
    parts = Path(file).with_suffix("").parts
    if parts[0] in ("models", "worker", "migrations"):
        parts = ("spotler_outbox", *parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def loaded_from_copy(mutant: Mutant, copy: Path, env: dict[str, str]) -> str | None:
    """None if Python, given only PYTHONPATH (-P), loads the mutated file from the copy;
    else what it loads instead."""
    module = module_of(mutant.file)
    if module is None:
        return None
    code = f"import importlib.util as u; print(u.find_spec({module!r}).origin)"
    found = subprocess.run([sys.executable, "-P", "-c", code], cwd=copy, env=env,
                           capture_output=True, text=True, check=False)
    origin = found.stdout.strip()
    if found.returncode or Path(origin).resolve() != (copy / mutant.file).resolve():
        return f"{module} is not loaded from the copy: {origin or found.stderr.strip()}"
    return None


def run_tests(tests: Sequence[str], copy: Path, env: dict[str, str],
              log: Path) -> tuple[str, str]:
    """(verdict, detail) of `pytest -x` on `tests` in the copy: killed when a test failed,
    survived when all passed, error for anything else (a skip, a setup error, no tests)."""
    junit = log.with_suffix(".xml")
    with log.open("w") as out:
        code = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-x", "-q",
             f"--junitxml={junit}", *tests],
            cwd=copy, env=env, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    failed, errors, skipped = _results(junit)
    if code == 1 and failed:
        return "killed", failed[0]
    if code == 0 and not skipped:
        return "survived", f"{len(tests)} test ids passed"
    reason = (f"skipped: {skipped[0]}" if skipped else f"error in {errors[0]}" if errors
              else f"pytest exit code {code}")
    return "error", reason


def _results(junit: Path) -> tuple[list[str], list[str], list[str]]:
    failed: list[str] = []
    errors: list[str] = []
    skipped: list[str] = []
    if not junit.exists():
        return failed, errors, skipped
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for kind, found in (("failure", failed), ("error", errors), ("skipped", skipped)):
            if case.find(kind) is not None:
                found.append(name)
    return failed, errors, skipped


def run_mutant(mutant: Mutant | None, tests: Sequence[str], slot: int, scratch: Path,
               keep: bool) -> tuple[str, str]:
    name = mutant.id if mutant else "baseline"
    copy = scratch / name / "checkout"
    copy_checkout(copy)
    env = slot_environment(slot, copy)
    try:
        if mutant is not None:
            apply(mutant, copy)
            wrong = loaded_from_copy(mutant, copy, env)
            if wrong:
                return "error", wrong
        return run_tests(tests, copy, env, scratch / name / "pytest.log")
    finally:
        if not keep:
            shutil.rmtree(copy, ignore_errors=True)


def unknown(catalogue: Catalogue, ids: Sequence[str], rows: Sequence[str]) -> list[str]:
    return ([i for i in ids if i not in {m.id for m in catalogue.mutants}]
            + [f"row {r}" for r in rows if r not in catalogue.rows])


def select(catalogue: Catalogue, ids: Sequence[str], rows: Sequence[str],
           fast: bool) -> list[Mutant]:
    return [m for m in catalogue.mutants
            if (not ids or m.id in ids) and (not rows or m.row in rows) and (m.fast or not fast)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev mutants", description=__doc__.splitlines()[0])
    parser.add_argument("ids", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--row", action="append", default=[], help="the mutants of a row")
    parser.add_argument("--fast", action="store_true", help="one mutant per row")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("TEST_PROCESSES", "2")))
    parser.add_argument("--list", action="store_true", help="list the rows and mutants")
    parser.add_argument("--check", action="store_true", help="only check the catalogue")
    parser.add_argument("--baseline", action="store_true",
                        help="run the selected mutants' tests once, unmutated: all must pass")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies")
    parser.add_argument("--catalogue", type=Path, default=CATALOGUE)
    args = parser.parse_args(argv)
    catalogue = load(args.catalogue)
    missing = unknown(catalogue, args.ids, args.row)
    if missing:
        parser.error(f"no such mutant or row: {', '.join(missing)}")
    problems = check(catalogue)
    for problem in problems:
        print(f"STALE    {problem}")
    chosen = select(catalogue, args.ids, args.row, args.fast)
    if args.list:
        _list(catalogue, chosen)
        return 1 if problems else 0
    if args.check or problems:
        print(f"{len(catalogue.mutants)} mutants, {len(problems)} problems")
        return 1 if problems else 0
    if args.baseline:
        return 0 if _baseline(chosen, args) else 1
    started = time.monotonic()
    outcomes = _run_all(chosen, args)
    _summary(catalogue, outcomes, time.monotonic() - started)
    return 0 if all(o.verdict == "killed" for o in outcomes) else 1


def _run_all(chosen: list[Mutant], args: argparse.Namespace) -> list[Outcome]:
    scratch = Path(tempfile.mkdtemp(prefix="spotler-mutants-"))
    slots: queue.Queue[int] = queue.Queue()
    for slot in range(max(1, args.jobs)):
        slots.put(slot)
    printing = threading.Lock()

    def one(mutant: Mutant) -> Outcome:
        slot = slots.get()
        started = time.monotonic()
        try:
            verdict, detail = run_mutant(mutant, mutant.tests, slot, scratch, args.keep)
        except Exception as e:  # a mutant that cannot be set up is reported, not fatal
            verdict, detail = "error", f"{type(e).__name__}: {e}"
        finally:
            slots.put(slot)
        outcome = Outcome(mutant, verdict, time.monotonic() - started, detail)
        with printing:
            print(f"{verdict.upper():8} {outcome.seconds:5.0f}s  {mutant.row:20} {mutant.id}: "
                  f"{detail}", flush=True)
            if verdict != "killed":
                log = scratch / mutant.id / "pytest.log"
                print(f"         {mutant.models}; log: {log}", flush=True)
        return outcome

    print(f"{len(chosen)} mutants, {args.jobs} at a time, scratch {scratch}", flush=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        outcomes = list(pool.map(one, chosen))
    if all(o.verdict == "killed" for o in outcomes) and not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return outcomes


def _baseline(chosen: list[Mutant], args: argparse.Namespace) -> bool:
    """Whether the chosen mutants' tests all pass on the unmutated copy."""
    tests = list(dict.fromkeys(t for m in chosen for t in m.tests))
    scratch = Path(tempfile.mkdtemp(prefix="spotler-mutants-"))
    started = time.monotonic()
    verdict, detail = run_mutant(None, tests, 0, scratch, args.keep)
    passed = verdict == "survived"
    print(f"baseline: {len(tests)} test ids, unmutated, in {time.monotonic() - started:.0f}s: "
          f"{'all passed' if passed else 'FAILED' if verdict == 'killed' else verdict} "
          f"({detail})")
    if passed and not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        print(f"log: {scratch / 'baseline' / 'pytest.log'}")
    return passed


def _list(catalogue: Catalogue, chosen: list[Mutant]) -> None:
    for row in catalogue.rows.values():
        mine = [m for m in chosen if m.row == row.id]
        print(f"{row.id}: {row.guarantee[:90]}")
        if row.pending and not mine:
            print(f"    (no mutant yet: {row.pending})")
        for m in mine:
            print(f"    {'*' if m.fast else ' '} {m.id}: {m.models}")


def _summary(catalogue: Catalogue, outcomes: list[Outcome], seconds: float) -> None:
    counts = {v: sum(o.verdict == v for o in outcomes) for v in ("killed", "survived", "error")}
    print(f"{len(outcomes)} mutants in {seconds:.0f}s: " +
          ", ".join(f"{n} {v}" for v, n in counts.items()))
    for row in catalogue.rows.values():
        if row.pending and not any(m.row == row.id for m in catalogue.mutants):
            print(f"row {row.id} has no mutant yet: {row.pending}")


if __name__ == "__main__":
    sys.exit(main())
