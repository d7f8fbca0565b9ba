"""Figures from `benchmarks.scale`'s samples, and the rows of its table."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from benchmarks.report import Row, Target, at_least, at_most, percentile
from benchmarks.scale_load import LockWatcher, PurgeResult, Samples


def window(s: Samples, lo: float, hi: float) -> tuple[float, list[float]]:
    """Rows settled per second within [lo, hi), and the sorted claim statement times (ms) of
    the claims that started within it."""
    rows = sum(n for at, n in zip(s.settled_at, s.rows, strict=True) if lo <= at < hi)
    claims = sorted(d * 1000 for at, d in zip(s.claim_at, s.claim_s, strict=True)
                    if lo <= at < hi)
    return (rows / (hi - lo) if hi > lo else float("nan")), claims


def drain_figures(prefix: str, s: Samples) -> dict[str, float]:
    """Phase 1: one drain of the pending rows, from the start signal to the last mark."""
    rows = sum(s.rows)
    ms = sorted(d * 1000 for d in s.claim_s)
    return {f"{prefix}": rows / (s.ended - s.started), f"{prefix}_p50": percentile(ms, 50),
            f"{prefix}_p99": percentile(ms, 99), f"{prefix}_max": ms[-1] if ms else 0.0}


def purge_figures(s: Samples, purge: PurgeResult, watcher: LockWatcher, span: float,
                  fed: int, pids: dict[int, str],
                  server: dict[str, tuple[float, int]]) -> dict[str, float]:
    """Phase 2: throughput and claim latency before / during / after the purge.

    `server`: window -> (WAL MB/s, checkpoints started), both server-wide."""
    f: dict[str, float] = {}
    edges = {"before": (purge.started - span, purge.started),
             "during": (purge.started, purge.ended), "after": (purge.ended, purge.ended + span)}
    for name, (lo, hi) in edges.items():
        rate, claims = window(s, lo, hi)
        f[f"cm_{name}"] = rate
        f[f"claim_p50_{name}"] = percentile(claims, 50)
        f[f"claim_p99_{name}"] = percentile(claims, 99)
        f[f"claim_max_{name}"] = claims[-1] if claims else float("nan")
    for name in ("before", "during"):
        lo, hi = edges[name]
        inside = [i for i, at in enumerate(s.claim_at) if lo <= at < hi]
        f[f"claim_tx_max_{name}"] = max((s.claim_tx_s[i] * 1000 for i in inside),
                                        default=float("nan"))
        f[f"mark_tx_max_{name}"] = max((s.mark_tx_s[i] * 1000 for i in inside),
                                       default=float("nan"))
    lo, hi = edges["during"]
    f["ratio_during"] = f["cm_during"] / f["cm_before"]
    f["ratio_after"] = f["cm_after"] / f["cm_before"]
    f["p99_ratio"] = f["claim_p99_during"] / f["claim_p99_before"]
    f["purge_s"] = purge.ended - purge.started
    f["purge_rows"] = float(purge.rows)
    f["purge_rate"] = purge.rows / f["purge_s"]
    picks = purge.statements.get("pick ids", [])
    f["purge_batches"] = float(len(picks))
    f["purge_pick_total"] = sum(picks)
    # The last pick finds fewer than a batch: it has to read on to prove nothing is left.
    f["purge_last_pick"] = picks[-1] * 1000 if picks else float("nan")
    for kind in ("pick ids", "delete links", "delete rows"):
        ms = sorted(d * 1000 for d in purge.statements.get(kind, []))
        key = kind.replace(" ", "_")
        f[f"purge_{key}_p50"] = percentile(ms, 50)
        f[f"purge_{key}_max"] = ms[-1] if ms else float("nan")
    for name, (lo_, hi_) in edges.items():
        sampled = sum(1 for at in watcher.sampled_at if lo_ <= at < hi_)
        # Distinct samples: both claimers waiting at once counts once.
        waiting = len({w.at for w in watcher.waits if lo_ <= w.at < hi_ and w.is_commit
                       and pids.get(w.pid) == "claimer" and w.kind in ("IO", "LWLock")})
        f[f"commit_wait_{name}"] = waiting / sampled * 100 if sampled else float("nan")
        f[f"wal_{name}"], checkpoints = server[name]
        f[f"checkpoints_{name}"] = float(checkpoints)
    waits = [w for w in watcher.waits if lo <= w.at < hi and w.is_claim_or_mark
             and w.kind == "Lock"]
    by_purge = [w for w in waits if w.blocked_by_purge]
    f["lock_waits"] = float(len(waits))
    f["lock_waits_purge"] = float(len(by_purge))
    f["lock_wait_max"] = max((w.waited_s * 1000 for w in waits), default=0.0)
    f["lock_samples"] = float(len(watcher.sampled_at))
    f["empty_claims"] = float(s.empty_claims)
    f["fed"] = float(fed)
    return f


def wait_summary(watcher: LockWatcher, purge: PurgeResult, span: float,
                 pids: dict[int, str]) -> list[str]:
    """Every wait of a claimer's session the watcher saw, by window, statement and cause."""
    counts: dict[str, int] = {}
    for w in watcher.waits:
        if pids.get(w.pid) != "claimer":
            continue
        when = ("before" if w.at < purge.started else "during" if w.at < purge.ended
                else "after")
        if when == "before" and w.at < purge.started - span:
            continue
        if w.kind == "Lock":
            what = w.who if w.is_claim_or_mark else w.query[:30]
            cause = f"lock '{w.event}', blocked by {w.blocked_by}"
        elif w.is_commit:
            what, cause = "COMMIT", "WAL (WALSync / WALWrite / WALInsert)"
        else:
            what, cause = "claim or mark", "buffers or data files (I/O, buffer LWLocks)"
        key = f"{when} the purge: {what} waits on {cause}"
        counts[key] = counts.get(key, 0) + 1
    order = {"before": 0, "during": 1, "after": 2}
    return [f"{n:5d} x {key}" for key, n in
            sorted(counts.items(), key=lambda kv: (order[kv[0].split()[0]], kv[0]))]


def table_rows(args: argparse.Namespace, index_names: Sequence[str]) -> list[Row | str]:
    ratio = at_least(0.8, ">= 0.8 (within 20%)")
    ms = "{:,.2f}"
    never = Target("= 0", lambda v: v == 0)
    return [
        f"1. claim + mark delivered, batch {args.batch}, {args.processes} processes, "
        f"{args.pending:,} pending rows",
        Row("(a) otherwise empty table, rows/s", "cm_empty"),
        Row(f"(b) table also holding {args.delivered:,} delivered rows, rows/s", "cm_big"),
        Row("(b) / (a)", "big_ratio", "{:.2f}", ratio),
        Row("(a) claim statement p50, ms", "cm_empty_p50", ms),
        Row("(b) claim statement p50, ms", "cm_big_p50", ms),
        Row("(a) claim statement p99, ms", "cm_empty_p99", ms),
        Row("(b) claim statement p99, ms", "cm_big_p99", ms),
        "   sizes of the big table after VACUUM ANALYZE, MB",
        Row("rows (reltuples)", "rows_total"),
        Row("heap", "size_heap", "{:,.1f}"),
        *(Row(f"index {name}", f"size_{name}", "{:,.1f}") for name in index_names),
        Row("total (heap + TOAST + indexes)", "size_total", "{:,.1f}"),
        Row("building it: INSERT ... SELECT generate_series, s", "build_insert_s", "{:,.1f}"),
        Row("building it: VACUUM ANALYZE, s", "build_vacuum_s", "{:,.1f}"),
        f"2. purge of {args.purge:,} delivered rows (models.operations.purge, batches of 1000,"
        f" cutoff 30d) while {args.processes} processes claim + mark fresh pending rows",
        Row("purge duration, s", "purge_s", "{:,.1f}"),
        Row("rows purged", "purge_rows"),
        Row("purge rate, rows/s", "purge_rate"),
        Row("purge statement 'pick 1000 ids' p50, ms", "purge_pick_ids_p50", ms),
        Row("purge statement 'pick 1000 ids' max, ms", "purge_pick_ids_max", ms),
        Row("purge's last 'pick' (finds the rest, then nothing), ms", "purge_last_pick", ms),
        Row("purge time spent in 'pick', all batches, s", "purge_pick_total", "{:,.1f}"),
        Row("purge statement 'delete links' p50, ms", "purge_delete_links_p50", ms),
        Row("purge statement 'delete rows' (1000) p50, ms", "purge_delete_rows_p50", ms),
        Row("purge statement 'delete rows' (1000) max, ms", "purge_delete_rows_max", ms),
        Row(f"claim + mark rows/s, {args.window:g} s before the purge", "cm_before"),
        Row("claim + mark rows/s, during the purge", "cm_during"),
        Row(f"claim + mark rows/s, {args.window:g} s after the purge", "cm_after"),
        Row("during / before", "ratio_during", "{:.2f}"),
        Row("after / before", "ratio_after", "{:.2f}"),
        Row("claim statement p50 before, ms", "claim_p50_before", ms),
        Row("claim statement p50 during, ms", "claim_p50_during", ms),
        Row("claim statement p99 before, ms", "claim_p99_before", ms),
        Row("claim statement p99 during, ms", "claim_p99_during", ms),
        Row("p99 during / p99 before", "p99_ratio", "{:.1f}x", at_most(3.0, "<= 3x")),
        Row("claim statement max before, ms", "claim_max_before", ms),
        Row("claim statement max during, ms", "claim_max_during", ms,
            at_most(1000.0, "<= 1000 ms")),
        Row("claim transaction (checkout..commit) max before, ms", "claim_tx_max_before", ms),
        Row("claim transaction (checkout..commit) max during, ms", "claim_tx_max_during", ms,
            at_most(1000.0, "<= 1000 ms")),
        Row("mark transaction max before, ms", "mark_tx_max_before", ms),
        Row("mark transaction max during, ms", "mark_tx_max_during", ms),
        f"   control: the same claimers and windows, a sleep as long as the purge instead of it"
        f" ({args.control} run(s))",
        Row(f"claim + mark rows/s, {args.window:g} s before", "ctl_cm_before"),
        Row("claim + mark rows/s, during the sleep", "ctl_cm_during"),
        Row(f"claim + mark rows/s, {args.window:g} s after", "ctl_cm_after"),
        Row("during / before (compare with the purge's)", "ctl_ratio_during", "{:.2f}"),
        Row("after / before", "ctl_ratio_after", "{:.2f}"),
        Row("claim statement p99 before, ms", "ctl_claim_p99_before", ms),
        Row("claim statement p99 during, ms", "ctl_claim_p99_during", ms),
        Row("claim statement max during, ms", "ctl_claim_max_during", ms),
        Row("claim transaction max during, ms", "ctl_claim_tx_max_during", ms),
        Row("% of samples with a claimer's COMMIT waiting on WAL I/O, during",
            "ctl_commit_wait_during", "{:.1f}%"),
        Row("checkpoints during", "ctl_checkpoints_during"),
        "   the server (WAL is shared with every database on it, other sessions' included)",
        Row("WAL written before, MB/s", "wal_before", "{:,.1f}"),
        Row("WAL written during, MB/s", "wal_during", "{:,.1f}"),
        Row("WAL written after, MB/s", "wal_after", "{:,.1f}"),
        Row("checkpoints (pg_stat_bgwriter) before", "checkpoints_before"),
        Row("checkpoints (pg_stat_bgwriter) during", "checkpoints_during"),
        Row("checkpoints (pg_stat_bgwriter) after", "checkpoints_after"),
        Row("% of 20 ms samples with a claimer's COMMIT waiting on WAL I/O, before",
            "commit_wait_before", "{:.1f}%"),
        Row("% of 20 ms samples with a claimer's COMMIT waiting on WAL I/O, during",
            "commit_wait_during", "{:.1f}%"),
        Row("% of 20 ms samples with a claimer's COMMIT waiting on WAL I/O, after",
            "commit_wait_after", "{:.1f}%"),
        "   pg_stat_activity sampled every 20 ms during the purge: claim / mark statements",
        Row("samples waiting on any lock", "lock_waits"),
        Row("samples waiting on a lock the purge holds", "lock_waits_purge", "{:,.0f}", never),
        Row("longest such statement seen so far when sampled, ms", "lock_wait_max", ms),
        Row("claims that found nothing (feeder behind), whole run", "empty_claims"),
        Row("rows fed while the claimers ran", "fed"),
    ]
