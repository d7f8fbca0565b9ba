"""`spotler-outbox demo` runs the whole pipeline with no server, as a user would start it, and
walks through the operator's loop: a refused order parked, `show`, the fix, `retry`."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("spotler-outbox")
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    tmp_path = tmp_path_factory.mktemp("demo")
    demo_dir = tmp_path / "demo-run"
    result = subprocess.run(
        [str(SCRIPT), "demo", "--orders", "50", "--dir", str(demo_dir)],
        capture_output=True, text=True, timeout=150, cwd=tmp_path, check=False,
    )
    return result, demo_dir


@pytest.mark.timeout(180)
def test_the_demo_delivers_every_valid_sample_order_exactly_once(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, demo_dir = demo
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Enqueued 51 orders with enqueue_purchase." in result.stdout
    assert "demo-invalid-1:" in result.stdout and "email: must be an e-mail address" in output
    assert "delivered          51 of 51" in result.stdout
    assert "failed             0" in result.stdout
    assert "each of the 51 orderids arrived exactly once" in result.stdout
    assert f"export OUTBOX_DATABASE_URL=sqlite:///{demo_dir.resolve()}/outbox.db" in output
    assert (demo_dir / "outbox.db").exists() and (demo_dir / "worker.log").exists()


@pytest.mark.timeout(180)
def test_the_demo_parks_a_refused_order_shows_why_and_delivers_it_after_a_retry(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, demo_dir = demo
    out = result.stdout
    parked = out.index("show demo-giftcard-1\n")
    retried = out.index("retry demo-giftcard-1\n")
    summary = out.index("Summary")
    assert parked < retried < summary, out
    shown = out[parked:retried]
    assert re.search(r"status\s+failed", shown)
    assert re.search(r"last HTTP\s+400", shown)
    assert "Spotler rejected the request (HTTP 400)" in shown
    assert re.search(r"rejected\s+\d+ ms", shown)  # the attempts that narrowed it down
    assert "g***@***" in shown and "gift.buyer@example.com" not in out
    assert "pending again and due now" in out[retried:summary]
    # The outbox's own record, read with plain SQL: delivered on its second try.
    with sqlite3.connect(demo_dir / "outbox.db") as db:
        status, delivered_at = db.execute(
            "SELECT status, delivered_at FROM outbox_events WHERE orderid = 'demo-giftcard-1'"
        ).fetchone()
        outcomes = [o for (o,) in db.execute(
            "SELECT a.outcome FROM delivery_attempts a JOIN delivery_attempt_events e "
            "ON e.attempt_id = a.id JOIN outbox_events o ON o.id = e.outbox_event_id "
            "WHERE o.orderid = 'demo-giftcard-1' ORDER BY a.id")]
    assert status == "delivered" and delivered_at is not None
    assert outcomes[-1] == "delivered" and set(outcomes[:-1]) == {"rejected"}


def test_the_demo_points_to_readme_sections_that_exist(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, _ = demo
    headings = set(re.findall(r"^#+ (.+)$", README.read_text(), re.M))
    pointer = next(line for line in result.stdout.splitlines()
                   if line.startswith("Next, in README.md"))
    named = set(re.findall(r'"([^"]+)"', pointer))
    assert named == {"Integrating", "Operations", "Flower", "Metrics and alerts"}
    assert named <= headings, named - headings
