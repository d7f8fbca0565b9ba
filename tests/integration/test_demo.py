"""`spotler-outbox demo` runs the whole pipeline with no server, as a user would start it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("spotler-outbox")


@pytest.mark.timeout(150)
def test_the_demo_delivers_every_valid_sample_order_exactly_once(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo-run"
    result = subprocess.run(
        [str(SCRIPT), "demo", "--orders", "50", "--dir", str(demo_dir)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Enqueued 50 orders with enqueue_purchase." in result.stdout
    assert "demo-invalid-1:" in result.stdout and "email: must be an e-mail address" in output
    assert "delivered          50 of 50" in result.stdout
    assert "failed             0" in result.stdout
    assert "each of the 50 orderids arrived exactly once" in result.stdout
    assert f"export OUTBOX_DATABASE_URL=sqlite:///{demo_dir.resolve()}/outbox.db" in output
    assert (demo_dir / "outbox.db").exists() and (demo_dir / "worker.log").exists()
