"""Records answered per second over the last minutes, by result: the dashboard's live chart.

Kept in memory by each service process (a second slot costs three integers);
Prometheus has the durable counters (`playproof_records_total`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Final

RESULTS: Final = ("accepted", "duplicate", "rejected")
KEEP_S: Final = 3600


class Live:
    """Per-second counts of answered records, by result, for the last hour."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._slots: dict[int, list[int]] = {}
        self.started = int(clock())

    def add(self, tally: Iterable[tuple[tuple[str, str], int]]) -> None:
        """Count one batch's acks, tallied by (result, reason)."""
        now = int(self._clock())
        slot = self._slots.get(now)
        if slot is None:
            slot = self._slots[now] = [0, 0, 0]
            if len(self._slots) > KEEP_S + 60:
                self._prune(now)
        for (result, _), n in tally:
            slot[RESULTS.index(result)] += n

    def _prune(self, now: int) -> None:
        for second in [s for s in self._slots if s <= now - KEEP_S]:
            del self._slots[second]

    def series(self, seconds: int, step: int) -> dict[str, Any]:
        """Counts per `step` seconds over the last `seconds`, oldest first, by result."""
        now = int(self._clock())
        first = (now - seconds) // step * step + step
        starts = list(range(first, now + 1, step))
        out: dict[str, Any] = {"step_s": step, "t": starts}
        for i, result in enumerate(RESULTS):
            out[result] = [
                sum(self._slots.get(s, (0, 0, 0))[i] for s in range(t, t + step)) for t in starts
            ]
        return out
