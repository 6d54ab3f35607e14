"""A throwaway PostgreSQL cluster of our own, for tests that kill the database.

Debian's `initdb` and `postgres` refuse to run as root, so they run as the
`postgres` OS user (through `runuser` when we are root) in a folder that user
owns. `kill()` sends SIGKILL to the postmaster and every backend at once: no
shutdown checkpoint, exactly a crash; `start()` again runs crash recovery.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from tests.support import free_port


def pg_bin_dir() -> Path | None:
    """The newest `/usr/lib/postgresql/*/bin` holding initdb and pg_ctl, if any."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(found[-1]).parent if found else None


def missing_reason() -> str | None:
    """Why a throwaway cluster cannot be made here, or None when it can."""
    if pg_bin_dir() is None:
        return "no /usr/lib/postgresql/*/bin/initdb (Debian package postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a `postgres` OS user to run initdb as"
        if shutil.which("runuser") is None:
            return "running as root without `runuser` to run initdb as postgres"
    return None


class Cluster:
    """initdb, start, SIGKILL and restart one PostgreSQL cluster on a free port."""

    def __init__(self) -> None:
        bindir = pg_bin_dir()
        assert bindir is not None, missing_reason()
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="pp-cluster-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres = os.geteuid() == 0
        self._server: subprocess.Popen[bytes] | None = None
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    def _prefix(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if self._as_postgres else []

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [*self._prefix(), *args], capture_output=True, timeout=120, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stderr.decode(errors='replace')}")

    def init(self) -> Cluster:
        """Create the cluster (trust auth, user postgres)."""
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )
        return self

    def start(self) -> None:
        """Start the server as our child process and wait until it accepts connections."""
        # Started directly rather than through `pg_ctl start`, so that the
        # postmaster stays our descendant and is reaped when it is killed: an
        # orphan zombie would keep its pid "alive" and block the restart.
        self._server = subprocess.Popen(
            [
                *self._prefix(),
                str(self.bindir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.root),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "shared_buffers=32MB",
                "-c",
                "max_connections=50",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "log").open("ab"),
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until a connection succeeds."""
        deadline = time.monotonic() + timeout
        while True:
            if self._server is not None and self._server.poll() is not None:
                log = (self.root / "log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"postgres exited with {self._server.returncode}: {log}")
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _pids(self) -> list[int]:
        pidfile = self.data / "postmaster.pid"
        if not pidfile.exists():
            return []
        postmaster = int(pidfile.read_text().split()[0])
        children = []
        for status in glob.glob("/proc/[0-9]*/status"):
            with contextlib.suppress(OSError):
                text = Path(status).read_text()
                if f"\nPPid:\t{postmaster}\n" in text:
                    children.append(int(Path(status).parts[2]))
        return [postmaster, *children]

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend: a crash, mid-whatever."""
        pids = self._pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._server is not None:
            self._server.wait(30)
            self._server = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.05)

    def destroy(self) -> None:
        """Kill the cluster and remove its files."""
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie waiting to be reaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
