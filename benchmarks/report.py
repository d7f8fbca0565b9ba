"""Figures per run -> one table of medians, with each run's figure and the targets."""

from __future__ import annotations

import operator
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(q / 100 * len(sorted_values) + 0.4999))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True)
class Target:
    text: str
    check: Callable[[float], bool]


def at_least(threshold: float, text: str) -> Target:
    return Target(text, lambda v: operator.ge(v, threshold))


def at_most(threshold: float, text: str) -> Target:
    return Target(text, lambda v: operator.le(v, threshold))


@dataclass(frozen=True)
class Row:
    label: str
    key: str
    fmt: str = "{:,.0f}"
    target: Target | None = None


def _fmt(fmt: str, value: float) -> str:
    return "n/a" if value != value else fmt.format(value)  # NaN: the phase did not run


def render(rows: Sequence[Row | str], runs: Sequence[dict[str, float]]) -> tuple[str, list[str]]:
    """The table, and the rows whose target was missed. A str row is a section heading."""
    table: list[list[str]] = []
    missed: list[str] = []
    for row in rows:
        if isinstance(row, str):
            table.append([row, "", "", "", ""])
            continue
        values = [run[row.key] for run in runs if row.key in run]
        if not values:
            continue
        mid = statistics.median(values)
        result = ""
        if row.target is not None:
            result = "pass" if row.target.check(mid) else "MISS"
            if result == "MISS":
                missed.append(row.label)
        each = " / ".join(_fmt(row.fmt, v) for v in values)
        table.append(["  " + row.label, _fmt(row.fmt, mid), each,
                      row.target.text if row.target else "", result])
    # A heading none of whose rows was measured (a phase skipped) goes too.
    table = [r for i, r in enumerate(table) if r[1] or (i + 1 < len(table) and table[i + 1][1])]
    headers = ["measurement", "median", "each run", "target", "result"]
    widths = [max(len(r[i]) for r in [headers, *table]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(
            c.ljust(w) if i in (0, 2, 3) else c.rjust(w) if i == 1 else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in table]
    return "\n".join(out), missed
