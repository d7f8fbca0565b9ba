"""Which delivery attempts a metrics scrape has not counted yet: a decision on ids, no SQL.

The exporter's counters must never go down, yet the attempts' table is purged. So the
exporter counts each attempt once, in process, as it first sees it: it keeps the highest id
it has seen and the ids below it it has not seen yet (gaps). A gap is an attempt whose
transaction took its id but had not committed at the scrape (ids are handed out before
commit, so commits can land out of order), or an id a rolled-back transaction burnt. The
first kind fills within seconds; a gap still open after `grace` is the second kind and is
forgotten, so the query stays small.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Gap:
    """Ids first..last (inclusive) not seen yet; noticed at `since`."""

    first: int
    last: int
    since: dt.datetime


@dataclass(frozen=True)
class FeedPosition:
    highest_seen: int
    gaps: tuple[Gap, ...] = ()


def advance(position: FeedPosition, new_ids: Iterable[int], now: dt.datetime,
            grace: dt.timedelta) -> FeedPosition:
    """The position after counting `new_ids` (ids above highest_seen or inside a gap)."""
    ids = sorted(set(new_ids))
    gaps: list[Gap] = []
    for gap in position.gaps:
        start = gap.first
        for found in (i for i in ids if gap.first <= i <= gap.last):
            if found > start:
                gaps.append(Gap(start, found - 1, gap.since))
            start = found + 1
        if start <= gap.last:
            gaps.append(Gap(start, gap.last, gap.since))
    highest = position.highest_seen
    for found in (i for i in ids if i > position.highest_seen):
        if found > highest + 1:
            gaps.append(Gap(highest + 1, found - 1, now))
        highest = found
    kept = tuple(g for g in gaps if now - g.since < grace)
    return FeedPosition(highest, kept)
