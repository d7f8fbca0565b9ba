"""The benchmark's child processes (fake API, Celery worker, beat) and what /proc says of them.

Every process is started in its own session, so Ctrl-C in the terminal reaches only the
benchmark, which then stops each child itself: nothing is left running behind it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import requests

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


class ProcessError(RuntimeError):
    pass


class Managed:
    """One child process group with its output in a log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.stopped = False
        self.name = name
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
        # Pool children left orphaned by a killed parent are still in the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self._log.close()
        self.stopped = True


_started: list[Managed] = []


def stop_all() -> None:
    """Stop whatever is still running, whichever way the run ended: nothing is left behind."""
    for proc in reversed(_started):
        proc.stop()
    _started.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_fake_api(log_dir: Path, *, account: str, api_key: str,
                   latency_ms: float) -> tuple[Managed, str]:
    """The fake API in its own process, so its handler threads never share our GIL."""
    port = free_port()
    cli = Path(sys.executable).parent / "spotler-outbox"
    args = ["fake-api", "--port", str(port), "--account", account, "--api-key", api_key,
            "--latency-ms", str(latency_ms)]
    command = [str(cli), *args] if cli.exists() else [
        sys.executable, "-c", "import sys; from worker.cli import main; sys.exit(main())", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OUTBOX_", "SPOTLER_"))}
    proc = Managed("fake-api", command, env, log_dir)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            if requests.get(f"{url}/_fake/received", timeout=1).status_code == 200:
                return proc, url
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    proc.stop()
    raise ProcessError(f"the fake API did not answer on {url} within 20 s")


def fake_received(url: str) -> int:
    return int(requests.get(f"{url}/_fake/received", timeout=10).json()["total_events"])


def start_worker(env: dict[str, str], log_dir: Path, name: str, concurrency: int,
                 pool: str = "prefork") -> Managed:
    command = [sys.executable, "-m", "celery", "-A", "spotler_outbox.worker", "worker",
               "--loglevel=INFO",
               f"--hostname={name}@%h", f"--pool={pool}", f"--concurrency={concurrency}",
               "--without-mingle", "--without-gossip"]
    proc = Managed(name, command, env, log_dir)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        proc.check_alive()
        forked = concurrency if pool == "prefork" else 0
        if " ready." in proc.output() and len(children(proc.pid)) >= forked:
            return proc
        time.sleep(0.1)
    proc.stop()
    raise ProcessError(f"worker {name} not ready after 60 s:\n{proc.output()[-3000:]}")


def start_beat(env: dict[str, str], log_dir: Path, name: str = "beat") -> Managed:
    # A separate beat, as in production: the worker's RSS is then only the main + pool children.
    command = [sys.executable, "-m", "celery", "-A", "spotler_outbox.worker", "beat",
               "--loglevel=WARNING",
               f"--schedule={log_dir / 'beat-schedule'}"]
    return Managed(name, command, env, log_dir)


# --- /proc --------------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself hold spaces or parentheses.
    return raw[raw.rindex(")") + 2:].split()


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def pids_named(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds spent on anything but idle and iowait, over all cores, since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


def _memory_kb(pid: int, path: str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler:
    """Peak RSS and PSS of a process and its children, sampled from a thread.

    RSS counts pages the forked pool children share with their parent once per process (what
    the target is stated in); PSS splits shared pages between them and is the honest total.
    """

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_rss_kb = 0
        self.peak_pss_kb = 0
        self.peak_rss_each_kb: dict[int, int] = {}
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
        pids = [self.pid, *children(self.pid)]
        each = {p: _memory_kb(p, "status", "VmRSS:") for p in pids}
        for pid, kb in each.items():
            self.peak_rss_each_kb[pid] = max(kb, self.peak_rss_each_kb.get(pid, 0))
        rss = sum(each.values())
        pss = sum(_memory_kb(p, "smaps_rollup", "Pss:") for p in pids)
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.peak_pss_kb = max(self.peak_pss_kb, pss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


class CpuMeter:
    """CPU seconds per component between start() and stop(): where the two cores went."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}
        self.wall = 0.0

    def _read(self) -> dict[str, float]:
        values = {name: cpu_seconds(pids) for name, pids in self.groups.items()}
        values["machine"] = machine_busy_seconds()
        return values

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = self._read()

    def stop(self) -> None:
        self.wall = time.monotonic() - self._t0
        end = self._read()
        self.used = {k: round(end[k] - self._start[k], 2) for k in end}
