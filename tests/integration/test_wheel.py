"""The wheel a shop installs: one import package, typed, that a shop's own files cannot shadow.

The wheel is built from this checkout and installed without dependencies into a fresh
virtualenv; the dependencies come from the test virtualenv through a plain path entry (a path
line in a .pth file does not run the editable install's finder, so only the wheel provides
spotler_outbox). Everything then runs from a directory holding a shop's own models.py and
worker.py, the names that collided before the namespace existed.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.workers import REDIS_URL, redis_or_skip

REPO = Path(__file__).resolve().parents[2]

USER_MODELS = "raise RuntimeError('the shop models.py was imported instead of spotler_outbox')\n"
USER_WORKER = "raise RuntimeError('the shop worker.py was imported instead of spotler_outbox')\n"

TYPED_CALLER = """\
from sqlalchemy.orm import Session

from spotler_outbox import EnqueueResult, InvalidEvent, enqueue_purchase


def place_order(session: Session) -> bool:
    try:
        result: EnqueueResult = enqueue_purchase(session, {"orderid": "A1"})
    except InvalidEvent as e:
        return not e.problems
    return result.created

reveal_type(enqueue_purchase)
"""

# A call mypy must refuse: proof that enqueue_purchase is typed, not Any.
WRONG_CALLER = """\
from spotler_outbox import enqueue_purchase

inserted: int = enqueue_purchase("not a session", 42)
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    # From a copy without build/ and *.egg-info: setuptools reuses what an earlier build left
    # there, so a file deleted from the package would still reach the wheel.
    source = root / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", "build", "*.egg-info", ".*_cache", "__pycache__", ".git", ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w",
                    str(dist), str(source)], check=True, capture_output=True, timeout=600)
    wheel = next(dist.glob("spotler_outbox-*.whl"))
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", str(wheel)], check=True, capture_output=True, timeout=300)
    purelib = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())
    # Dependencies from the test environment, as a plain path (no editable finder runs).
    (purelib / "zz_test_dependencies.pth").write_text(site.getsitepackages()[0] + "\n")
    shop = root / "shop"
    shop.mkdir()
    (shop / "models.py").write_text(USER_MODELS)
    (shop / "worker.py").write_text(USER_WORKER)
    yield shop


def site_packages_of(shop: Path) -> Path:
    return shop.parent / "venv" / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" \
        / "site-packages"


def run_in_shop(shop: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    python = shop.parent / "venv" / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(python), *args], cwd=shop, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_wheel_installs_only_the_spotler_outbox_package(installed: Path) -> None:
    ours = {p.name for p in site_packages_of(installed).iterdir()
            if not p.name.startswith(("_distutils", "distutils", "zz_test_dependencies"))}
    ours -= {"pip", "setuptools", "pkg_resources", "_virtualenv.py", "_virtualenv.pth"}
    ours = {name for name in ours if not name.startswith(("pip-", "setuptools-"))}
    assert {n for n in ours if not n.endswith(".dist-info")} == {"spotler_outbox"}
    assert [n for n in ours if n.endswith(".dist-info")] == ["spotler_outbox-0.1.0.dist-info"]
    assert (site_packages_of(installed) / "spotler_outbox" / "py.typed").is_file()


def test_the_public_api_imports_from_the_wheel_beside_a_shops_own_models_and_worker(
        installed: Path) -> None:
    probe = run_in_shop(installed, "-c", (
        "import spotler_outbox, spotler_outbox.worker.celery as c; "
        "from spotler_outbox import enqueue_purchase, InvalidEvent, EnqueueResult; "
        "print(spotler_outbox.__file__); print(c.app.main)"))
    assert probe.returncode == 0, probe.stderr
    module_file, app_name = probe.stdout.split()
    assert module_file.startswith(str(site_packages_of(installed)))
    assert app_name == "spotler_outbox"


def test_mypy_sees_enqueue_purchase_typed_in_a_shops_module(installed: Path) -> None:
    (installed / "orders.py").write_text(TYPED_CALLER)
    (installed / "wrong.py").write_text(WRONG_CALLER)
    python = str(installed.parent / "venv" / "bin" / "python")
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
            "--python-executable", python]
    typed = subprocess.run([*mypy, "orders.py"], cwd=installed, capture_output=True, text=True,
                           timeout=300)
    # The event is JSON (Mapping[str, Any]); the session and the result must be real types.
    assert "-> spotler_outbox.models.enqueue.EnqueueResult" in typed.stdout, typed.stdout
    assert "Revealed type is \"Any\"" not in typed.stdout
    assert "error" not in typed.stdout.replace("Revealed", ""), typed.stdout
    wrong = subprocess.run([*mypy, "wrong.py"], cwd=installed, capture_output=True, text=True,
                           timeout=300)
    assert wrong.returncode == 1
    assert "Argument 1 to \"enqueue_purchase\" has incompatible type" in wrong.stdout, wrong.stdout


def test_celery_loads_the_spotler_outbox_app_beside_a_shops_worker_py(
        installed: Path, tmp_path: Path) -> None:
    redis_or_skip()
    python = installed.parent / "venv" / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OUTBOX_DATABASE_URL=f"sqlite:///{tmp_path / 'outbox.db'}",
               OUTBOX_BROKER_URL=REDIS_URL, SPOTLER_ACCOUNT="acct", SPOTLER_API_KEY="k")
    log = tmp_path / "celery.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(python), "-m", "celery", "-A", "spotler_outbox.worker", "worker",
             "--pool=solo", "--loglevel=INFO", "--without-mingle", "--without-gossip"],
            cwd=installed, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while "ready." not in log.read_text() and process.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            process.terminate()
            process.wait(timeout=30)
    text = log.read_text()
    assert "ready." in text, text
    assert "spotler_outbox.dispatch" in text, text
    assert "shop worker.py" not in text
