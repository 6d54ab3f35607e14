"""What a worker reports about its screens, every second, and how reports add up."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

# Samples kept per report for quantiles (a reservoir: bounded, unbiased).
RESERVOIR: Final = 4000
LAG_TICK_S: Final = 0.1


@dataclass
class Progress:
    """A worker's screens at one instant; counts are totals since the start."""

    worker: int = 0
    phase: str = "starting"
    sim_now_ms: int = 0
    real_now: float = 0.0
    screens: int = 0
    started: int = 0
    connected: int = 0
    offline: int = 0
    down: int = 0
    failed: int = 0
    recorded: int = 0
    unrecorded: int = 0
    crashes: int = 0
    cuts: int = 0  # offline windows begun
    steps: int = 0  # wall clocks set mid-run
    queued: int = 0
    acks: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    # Samples of the last interval only, in milliseconds.
    lag_ms: list[float] = field(default_factory=list)
    round_trip_ms: list[float] = field(default_factory=list)


def combine(parts: Sequence[Progress]) -> Progress:
    """The fleet's progress: the workers' summed (samples pooled)."""
    total = Progress(worker=-1, phase=_phase(p.phase for p in parts))
    acks: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    for part in parts:
        for name in _SUMMED:
            setattr(total, name, getattr(total, name) + getattr(part, name))
        acks.update(part.acks)
        rejected.update(part.rejected)
        total.lag_ms += part.lag_ms
        total.round_trip_ms += part.round_trip_ms
    total.sim_now_ms = max((p.sim_now_ms for p in parts), default=0)
    total.real_now = max((p.real_now for p in parts), default=0.0)
    total.acks, total.rejected = dict(acks), dict(rejected)
    return total


_SUMMED: Final = (
    "screens",
    "started",
    "connected",
    "offline",
    "down",
    "failed",
    "recorded",
    "unrecorded",
    "crashes",
    "cuts",
    "steps",
    "queued",
)
_PHASES: Final = ("starting", "running", "stopping", "draining", "done")


def _phase(phases: Iterable[str]) -> str:
    found = list(phases)
    return min(found, key=_PHASES.index) if found else "starting"


def quantile(samples: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) of the samples, nearest rank; None when there are none."""
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


class Sampler:
    """Keeps at most RESERVOIR samples of an interval, each equally likely (reservoir)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random(0)
        self._samples: list[float] = []
        self._seen = 0

    def add(self, value: float) -> None:
        """Offer one sample."""
        self._seen += 1
        if len(self._samples) < RESERVOIR:
            self._samples.append(value)
            return
        slot = self._rng.randrange(self._seen)
        if slot < RESERVOIR:
            self._samples[slot] = value

    def take(self) -> list[float]:
        """The interval's samples; the next interval starts empty."""
        samples, self._samples, self._seen = self._samples, [], 0
        return samples


async def measure_lag(sampler: Sampler) -> None:
    """Record how late the event loop wakes a task that sleeps LAG_TICK_S, until cancelled."""
    while True:
        before = time.perf_counter()
        await asyncio.sleep(LAG_TICK_S)
        sampler.add(max(0.0, (time.perf_counter() - before - LAG_TICK_S) * 1000.0))
