"""Which attempt ids the exporter still looks for: a table of positions, new ids and times."""

from __future__ import annotations

import datetime as dt

import pytest

from spotler_outbox.worker.console.attempt_feed import FeedPosition, Gap, advance

T0 = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
GRACE = dt.timedelta(minutes=10)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


@pytest.mark.parametrize(("before", "new_ids", "now", "after"), [
    # Consecutive ids: nothing left to look for.
    (FeedPosition(5), [6, 7], at(0), FeedPosition(7)),
    # Nothing new: the position stays.
    (FeedPosition(5), [], at(0), FeedPosition(5)),
    # 6 and 8 not committed yet: both looked for from now on.
    (FeedPosition(5), [7, 9], at(0), FeedPosition(9, (Gap(6, 6, at(0)), Gap(8, 8, at(0))))),
    # A jump (a sequence's cache after a crash) is one gap, not thousands.
    (FeedPosition(5), [5006], at(0), FeedPosition(5006, (Gap(6, 5005, at(0)),))),
    # A late commit fills its gap, which splits around it and keeps when it was noticed.
    (FeedPosition(9, (Gap(2, 6, at(0)),)), [4], at(1),
     FeedPosition(9, (Gap(2, 3, at(0)), Gap(5, 6, at(0))))),
    (FeedPosition(9, (Gap(6, 6, at(0)),)), [6, 10], at(1), FeedPosition(10)),
    # A gap open for the whole grace period was burnt by a rollback: forgotten.
    (FeedPosition(9, (Gap(6, 6, at(0)),)), [], at(10), FeedPosition(9)),
    (FeedPosition(9, (Gap(6, 6, at(0)),)), [], at(9.9), FeedPosition(9, (Gap(6, 6, at(0)),))),
])
def test_advance_counts_new_ids_and_keeps_looking_for_gaps_until_the_grace_passes(
    before: FeedPosition, new_ids: list[int], now: dt.datetime, after: FeedPosition
) -> None:
    assert advance(before, new_ids, now, GRACE) == after
