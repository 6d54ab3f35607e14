"""Watching a fleet's delivery from the service's database, for the fault scenarios."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

WAIT_S = 60.0  # the longest wait for delivery to show up (a deadline, not a speed)


def stored(db: Path) -> int:
    """Impressions the service holds now (a crashed service's WAL is read as SQLite does)."""
    if not db.exists():
        return 0
    conn = sqlite3.connect(db, timeout=10)
    try:
        try:
            return int(conn.execute("SELECT count(*) FROM impressions").fetchone()[0])
        except sqlite3.OperationalError:
            return 0  # the schema is not there yet
    finally:
        conn.close()


def wait_stored(db: Path, at_least: int, what: str, fleet: subprocess.Popen[str]) -> None:
    """Poll until the service holds `at_least` impressions; fail saying `what` (and why)."""
    deadline = time.monotonic() + WAIT_S
    while stored(db) < at_least:
        if fleet.poll() is not None:
            out, err = fleet.communicate()
            raise AssertionError(f"the fleet exited ({fleet.returncode}) {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out {what}")
        time.sleep(0.05)
