"""The reliability tally: what each fault scenario checked, for RELIABILITY.md.

Every scenario reports through the `tally` fixture (tests/conftest.py). `make test`
runs each once, briefly; `bench/soak.py` runs them with more rounds
(PLAYPROOF_FAULT_ROUNDS) and collects the tallies (PLAYPROOF_RELIABILITY_OUT, a
JSON-lines file) into the table of RELIABILITY.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

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
