"""The container's health check (the Dockerfile's HEALTHCHECK): `python -m` this module.

One image runs several roles (worker, beat, Flower, the exporter), so the check asks the role
the container's main process runs, read from its command line: a worker must answer a Celery
ping through the broker, Flower and the exporter must answer HTTP on their port. Exit 0 when
healthy, 1 when not (Docker's convention), with one line saying why.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Probe:
    role: str  # worker, flower, metrics, or anything else (nothing to ask)
    host: str = "127.0.0.1"
    port: int = 0
    node: str = ""  # the worker's Celery node name


def _option(argv: Sequence[str], names: tuple[str, ...], default: str) -> str:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return default


def _local(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def probe_for(argv: Sequence[str], hostname: str) -> Probe:
    """What to ask, from the main process's command line (a decision, no I/O)."""
    # A console script runs as `python /usr/local/bin/celery ...` (the kernel puts the
    # interpreter first), maybe behind an init (`docker-init -- ...`): compare base names.
    words = [Path(a).name if a.startswith("/") else a for a in argv]
    if "celery" in words:
        if "worker" in words:
            node = _option(argv, ("-n", "--hostname"), "celery@%h").replace("%h", hostname)
            return Probe("worker", node=node if "@" in node else f"celery@{node}")
        if "flower" in words:
            return Probe("flower", _local(_option(argv, ("--address",), "127.0.0.1")),
                         int(_option(argv, ("--port",), "5555")))
        return Probe("beat" if "beat" in words else "other")
    if "spotler-outbox" in words and "metrics" in words:
        return Probe("metrics", _local(_option(argv, ("--host",), "127.0.0.1")),
                     int(_option(argv, ("--port",), "9808")))
    return Probe("other")


def check(probe: Probe) -> tuple[bool, str]:
    if probe.role == "worker":
        from spotler_outbox.worker.celery import app

        replies = app.control.ping(destination=[probe.node], timeout=TIMEOUT_SECONDS / 2)
        return bool(replies), f"worker {probe.node}: " + ("pong" if replies else "no answer")
    if probe.role in ("flower", "metrics"):
        path = "/healthcheck" if probe.role == "flower" else "/metrics"
        url = f"http://{probe.host}:{probe.port}{path}"
        try:
            status = requests.get(url, timeout=TIMEOUT_SECONDS).status_code
        except requests.RequestException as e:
            return False, f"{probe.role} at {url}: {type(e).__name__}"
        return status == 200, f"{probe.role} at {url}: HTTP {status}"
    return True, f"{probe.role}: running (nothing to ask)"


def main_process_argv() -> list[str]:
    return Path("/proc/1/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]


def main(argv: Sequence[str] | None = None) -> int:
    ok, why = check(probe_for(main_process_argv() if argv is None else argv,
                              socket.gethostname()))
    print(why)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or None))
