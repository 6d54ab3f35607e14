"""Fixtures of the fault scenarios."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import IN_CI


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs here: {done.stderr.strip()}"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# --- the reliability tally ------------------------------------------------------
#
# Every scenario reports what it checked through the `tally` fixture. `make test`
# runs each once, briefly; `bench/soak.py` runs them with more rounds
# (PLAYPROOF_FAULT_ROUNDS) and collects the tallies (PLAYPROOF_RELIABILITY_OUT, a
# JSON-lines file) into the table of RELIABILITY.md.

ROUNDS = max(1, int(os.environ.get("PLAYPROOF_FAULT_ROUNDS", "1")))


@dataclass
class Tally:
    """What one scenario run checked: faults injected, records involved, the oracle's verdict."""

    scenario: str
    faults: int = 0
    records: int = 0
    lost: int = 0
    doubled: int = 0
    notes: dict[str, int] = field(default_factory=dict)

    def add_reconciliation(self, report: dict[str, Any]) -> None:
        """Take the totals of a `playproof reconcile --json` report."""
        total = report["total"]
        self.records += int(total["recorded"])
        self.lost += int(total["lost"])
        self.doubled += int(total["double"])
        for name in ("duplicates", "evicted", "queued"):
            self.notes[name] = self.notes.get(name, 0) + int(total[name])


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    """A scenario's tally, appended to PLAYPROOF_RELIABILITY_OUT (when set) as it ends."""
    result = Tally(scenario=request.node.nodeid)
    yield result
    out = os.environ.get("PLAYPROOF_RELIABILITY_OUT")
    if out:
        with open(out, "a", encoding="utf-8") as sink:
            sink.write(json.dumps(asdict(result)) + "\n")
