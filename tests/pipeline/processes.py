"""`playproof load` in real processes, and waiting on what they loaded."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import psycopg

from tests.support import _drain


class LoaderProcess:
    """`playproof load --pipeline URL --db URL` in a real process."""

    def __init__(self, db_url: str, pipeline: str, *extra: str) -> None:
        self.cmd = [
            sys.executable,
            "-m",
            "playproof",
            "load",
            "--pipeline",
            pipeline,
            "--db",
            db_url,
            "--log-level",
            "warning",
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = b""

    def start(self, timeout: float = 30.0) -> LoaderProcess:
        """Start the loader and return once it has bound its consumers."""
        self.proc = subprocess.Popen(self.cmd, stderr=subprocess.PIPE, env=dict(os.environ))
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            self.log += line
            if re.search(rb"playproof loading partitions", line):
                _drain(self.proc)
                return self
            if not line and self.proc.poll() is not None:
                break
        raise RuntimeError(f"loader did not start: {self.log.decode(errors='replace')}")

    def kill(self) -> None:
        """SIGKILL: mid-batch, no ack, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM (the batch under way finishes) and wait; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def impressions(db_url: str) -> int:
    """How many impressions the database holds."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM impressions").fetchone()
    return int(row[0]) if row else 0


def wait_for_rows(db_url: str, at_least: int, timeout: float = 60.0) -> int:
    """Block until the database holds at least `at_least` impressions; their number."""
    deadline = time.monotonic() + timeout
    while (found := impressions(db_url)) < at_least:
        if time.monotonic() > deadline:
            raise AssertionError(f"expected at least {at_least} impressions, found {found}")
        time.sleep(0.05)
    return found
