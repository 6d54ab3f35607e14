"""`playproof load` in real processes, and waiting on what they loaded."""

from __future__ import annotations

import sys
import time

import psycopg

from tests.support import ChildProcess


class LoaderProcess(ChildProcess):
    """`playproof load --pipeline URL --db URL` in a real process."""

    GRACE_S = 30.0  # SIGTERM lets the batch under way finish

    def __init__(self, db_url: str, pipeline: str, *extra: str) -> None:
        super().__init__()
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

    def start(self, timeout: float = 30.0) -> LoaderProcess:
        """Start the loader and return once it has bound its consumers."""
        self._spawn(self.cmd, rb"playproof loading partitions", "loader", timeout)
        return self


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
