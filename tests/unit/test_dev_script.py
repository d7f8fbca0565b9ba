"""`./dev demo` installs only the runtime; `./dev test` the test extra; each once per pyproject.

The script runs for real, with a stand-in `python3` on PATH whose virtualenv records every
pip install and every tool run instead of downloading anything.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FAKE_PYTHON3 = """#!/usr/bin/env bash
# python3 -m venv DIR: a venv whose python logs pip installs and makes logging tool stand-ins.
set -eu
[ "$1 $2" = "-m venv" ] || exit 97
mkdir -p "$3/bin"
cat > "$3/bin/python" <<'PY'
#!/usr/bin/env bash
echo "python $*" >> "$DEV_LOG"
if [ "$1 $2 $3" = "-m pip install" ]; then
  for tool in spotler-outbox ruff mypy pytest; do
    printf '#!/usr/bin/env bash\\necho "%s $*" >> "$DEV_LOG"\\n' "$tool" > "$(dirname "$0")/$tool"
    chmod +x "$(dirname "$0")/$tool"
  done
fi
PY
chmod +x "$3/bin/python"
"""


def dev(tmp_path: Path, *args: str) -> list[str]:
    log = tmp_path / "log"
    log.write_text("")
    env = {**os.environ, "PATH": f"{tmp_path / 'fakebin'}:/usr/bin:/bin",
           "DEV_LOG": str(log)}
    subprocess.run([str(tmp_path / "repo" / "dev"), *args], env=env, check=True, timeout=60)
    return log.read_text().splitlines()


def installs(lines: list[str]) -> list[str]:
    return [line.split()[-1] for line in lines if line.startswith("python -m pip install")
            and "--upgrade" not in line]


def test_demo_installs_the_runtime_only_and_test_the_test_extra_each_once(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "dev", repo)
    shutil.copy(ROOT / "pyproject.toml", repo)
    (tmp_path / "fakebin").mkdir()
    fake = tmp_path / "fakebin" / "python3"
    fake.write_text(FAKE_PYTHON3)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)

    first_demo = dev(tmp_path, "demo", "--orders", "5")
    second_demo = dev(tmp_path, "demo")
    first_test = dev(tmp_path, "test", "-q")
    demo_after_test = dev(tmp_path, "demo")
    with (repo / "pyproject.toml").open("a") as f:
        f.write("\n# changed\n")
    demo_after_change = dev(tmp_path, "demo")

    assert installs(first_demo) == ["."]
    assert "spotler-outbox demo --orders 5" in first_demo
    assert installs(second_demo) == [] and "spotler-outbox demo" in second_demo
    assert installs(first_test) == [".[test]"]
    assert [line.split()[0] for line in first_test if not line.startswith("python")] == [
        "ruff", "mypy", "pytest"]
    assert installs(demo_after_test) == []
    assert installs(demo_after_change) == ["."]
