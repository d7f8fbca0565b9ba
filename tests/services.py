"""Throwaway PostgreSQL, PgBouncer and Redis servers that a test may stop, kill and restart.

The shared servers on this machine serve every other test; faults are injected only into
these private ones, each on its own free loopback port and data directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import in_ci

PG_BIN_CANDIDATES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listening on port {port} after {timeout}s")


def _unavailable(message: str) -> None:
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


class ThrowawayPostgres:
    def __init__(self) -> None:
        if not PG_BIN_CANDIDATES:
            _unavailable("PostgreSQL server binaries not found under /usr/lib/postgresql")
        self.bin = PG_BIN_CANDIDATES[0]
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="outbox-pg-"))
        self.data = self.dir / "data"
        self._as_postgres = os.geteuid() == 0  # initdb refuses to run as root
        if self._as_postgres:
            owner = pwd.getpwnam("postgres")
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
                  "-E", "UTF8")
        self.start()
        subprocess.run(
            [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
             "postgres", "outbox"], check=True, capture_output=True)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/outbox"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise AssertionError(f"{tool} failed: {result.stdout}{result.stderr}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start")
        wait_port(self.port)

    def stop(self, mode: str = "fast") -> None:
        """mode "immediate" is a crash: no checkpoint, recovery from WAL at the next start."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(AssertionError):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


class ThrowawayRedis:
    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            _unavailable("redis-server not found")
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # Redis keeps nothing on disk here: a restart loses every message
            self.process.wait(10)
        self.process = None

    def destroy(self) -> None:
        self.stop()


PGBOUNCER = Path("/usr/sbin/pgbouncer")


class ThrowawayPgBouncer:
    """A PgBouncer of its own on a free loopback port, in front of a PostgreSQL server
    (`auth_type = trust`, every database of the server under its own name; `url` names
    `database`, `url_for` any other).

    `pool_mode` is PgBouncer's: "transaction" hands each transaction whichever server
    connection is free, as the PgBouncers in front of many shops do."""

    def __init__(self, database: str = "postgres", *, server_host: str = "127.0.0.1",
                 server_port: int = 5432, pool_mode: str = "transaction",
                 user: str = "postgres", pool_size: int = 5) -> None:
        self.database = database
        binary = shutil.which("pgbouncer") or (str(PGBOUNCER) if PGBOUNCER.exists() else None)
        if binary is None:
            _unavailable("pgbouncer not found (Debian: apt-get install pgbouncer)")
        self.user = user
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="outbox-pgbouncer-"))
        (self.dir / "userlist.txt").write_text(f'"{user}" ""\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={server_host} port={server_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.dir / 'userlist.txt'}\n"
            f"pool_mode = {pool_mode}\ndefault_pool_size = {pool_size}\n"
            "max_client_conn = 100\n"
            # psycopg and SQLAlchemy send these at connect; PgBouncer refuses unknown ones.
            "ignore_startup_parameters = extra_float_digits,options\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n")
        command = [binary, str(self.dir / "pgbouncer.ini")]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            owner = pwd.getpwnam("postgres")
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            command[1:1] = ["-u", "postgres"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT)
        try:
            wait_port(self.port, timeout=15)
        except AssertionError:
            self.destroy()
            raise

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str, driver: str = "postgresql+psycopg") -> str:
        """A SQLAlchemy URL for `database` through this PgBouncer."""
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{database}"

    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def destroy(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

