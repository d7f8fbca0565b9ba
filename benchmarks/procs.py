"""The benchmarks' child processes (fake API, Celery worker) and what /proc says of them.

Every child runs in its own session, so Ctrl-C in the terminal reaches only the benchmark,
which then stops each child itself: nothing is left running behind it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import requests

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
CHILD_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("OUTBOX_", "SPOTLER_"))}


class ProcessError(RuntimeError):
    pass


class Managed:
    """One child process group with its output in a log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.stopped = name, False
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                                        start_new_session=True)
        _started.append(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = "\n".join(self.output().splitlines()[-30:])
            raise ProcessError(f"{self.name} exited with {self.process.returncode}:\n{tail}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the group (a warm shutdown for Celery), then SIGKILL what is left."""
        if self.stopped:
            return  # never signal a group id again once stopped: it may belong to another
        if self.process.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.process.wait(10)
            except ProcessLookupError:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # pool children orphaned by a killed parent
        self._log.close()
        self.stopped = True


_started: list[Managed] = []


def stop_all() -> None:
    """Stop whatever is still running, whichever way the run ended."""
    for proc in reversed(_started):
        proc.stop()
    _started.clear()


def _wait_until(proc: Managed, ready: Callable[[], bool], what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        proc.check_alive()
        with contextlib.suppress(requests.ConnectionError):
            if ready():
                return
        time.sleep(0.05)
    proc.stop()
    raise ProcessError(f"{proc.name}: {what} not seen within {seconds:.0f} s")


def start_fake_api(log_dir: Path, name: str, *, account: str, api_key: str,
                   latency_ms: float) -> tuple[Managed, str]:
    """The fake API in its own process, so its handler threads never share our GIL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    command = [sys.executable, "-m", "spotler_outbox.worker.console.cli", "fake-api",
               "--port", str(port), "--account", account, "--api-key", api_key,
               "--latency-ms", str(latency_ms)]
    cli = Path(sys.executable).parent / "spotler-outbox"
    if cli.exists():
        command[:3] = [str(cli)]
    proc = Managed(name, command, CHILD_ENV, log_dir)
    url = f"http://127.0.0.1:{port}"
    _wait_until(proc, lambda: requests.get(f"{url}/_fake/received", timeout=1).ok,
                "an answer", 20)
    return proc, url


def fake_received(url: str) -> int:
    return int(requests.get(f"{url}/_fake/received", timeout=10).json()["total_events"])


def start_worker(env: dict[str, str], log_dir: Path, name: str, *, pool: str,
                 concurrency: int | None) -> Managed:
    """`concurrency=None`: Celery's default, as `celery -A spotler_outbox.worker worker`."""
    command = [sys.executable, "-m", "celery", "-A", "spotler_outbox.worker", "worker",
               "--loglevel=INFO", f"--hostname={name}@%h", f"--pool={pool}",
               "--without-mingle", "--without-gossip"]
    if concurrency is not None:
        command.append(f"--concurrency={concurrency}")
    proc = Managed(name, command, env, log_dir)
    forked = (concurrency or os.cpu_count() or 1) if pool == "prefork" else 0
    _wait_until(proc, lambda: " ready." in proc.output() and len(tree(proc.pid)) > forked,
                "' ready.' and its pool", 60)
    return proc


@contextlib.contextmanager
def py_spy(pids: Iterable[int], out_dir: Path | None) -> Iterator[None]:
    """py-spy on each process, when out_dir is set: collapsed stacks of the thread holding the
    GIL only, so waits on the socket (GIL released) drop out and what is left is Python CPU."""
    if out_dir is None:
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    local = Path(sys.executable).parent / "py-spy"
    spy = str(local) if local.exists() else shutil.which("py-spy")
    if spy is None:
        raise ProcessError("--profile needs py-spy: .venv/bin/pip install py-spy")
    spies = [subprocess.Popen([spy, "record", "--pid", str(p),
                               "--format", "raw", "--rate", "250", "--nonblocking", "--gil",
                               "-o", str(out_dir / f"{p}.txt")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for p in pids]
    time.sleep(1.0)  # py-spy attaches in well under a second
    try:
        yield
    finally:
        for proc in spies:
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for proc in spies:
            proc.wait(30)


# --- /proc --------------------------------------------------------------------------------

def _stat(path: str) -> list[str] | None:
    try:
        raw = Path(path).read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # the name in parentheses may hold spaces


def tree(pid: int) -> list[int]:
    """The process and all its descendants."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(f"/proc/{entry.name}/stat")):
            parents[int(entry.name)] = int(fields[1])
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [p for p, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def cpu_ticks(path: str, *, reaped: bool = True) -> int:
    """utime + stime of /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat; with `reaped`, the
    children it has waited for too, so a pool child that exits keeps counting in its tree."""
    fields = _stat(path)
    if fields is None:
        return 0
    return sum(int(v) for v in fields[11:15 if reaped else 13])


def machine_busy_ticks() -> int:
    """Ticks of all cores spent on anything but idle and iowait, since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values) - values[3] - values[4]


# A group names the /proc stat files to read, asked afresh at start and at stop: processes
# (or server threads) that appear meanwhile count from zero.
Group = Callable[[], Iterable[str]]


def process_tree(pid: int) -> Group:
    return lambda: [f"/proc/{p}/stat" for p in tree(pid)]


class CpuMeter:
    """CPU seconds per group between start() and stop(), and the whole machine's."""

    def __init__(self, groups: dict[str, Group]) -> None:
        self.groups = groups
        self._start: dict[str, dict[str, int]] = {}
        self.used: dict[str, float] = {}
        self.wall = 0.0

    def _read(self) -> dict[str, dict[str, int]]:
        out = {name: {path: cpu_ticks(path) for path in paths()}
               for name, paths in self.groups.items()}
        out["machine"] = {"": machine_busy_ticks()}
        return out

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = self._read()

    def stop(self) -> None:
        self.wall = time.monotonic() - self._t0
        end = self._read()
        self.used = {name: sum(t - self._start[name].get(p, 0) for p, t in ticks.items())
                     / CLK_TCK for name, ticks in end.items()}


def _memory_kb(pid: int, path: str, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    return 0


class MemorySampler:
    """Peak RSS and PSS of a process tree, sampled from a thread.

    RSS counts pages the forked pool children share with their parent once per process; PSS
    splits shared pages between them and is the honest total.
    """

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.peak_rss_kb = self.peak_pss_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> None:
        pids = tree(self.pid)
        self.peak_rss_kb = max(self.peak_rss_kb,
                               sum(_memory_kb(p, "status", "VmRSS:") for p in pids))
        self.peak_pss_kb = max(self.peak_pss_kb,
                               sum(_memory_kb(p, "smaps_rollup", "Pss:") for p in pids))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)
