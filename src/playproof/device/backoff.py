"""Waiting: exponential backoff with full jitter, and waiting on an event with a limit."""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Exponential backoff with full jitter: each delay is uniform in [0, min(cap, base·2ⁿ)]."""

    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self, at_least_s: float = 0.0) -> float:
        """The delay before the next try; never under `at_least_s` (a server's Retry-After)."""
        ceiling = min(self.cap_s, self.base_s * 2 ** min(self.failures, 32))
        self.failures += 1
        return max(at_least_s, self._rng.uniform(0.0, ceiling))

    def reset(self) -> None:
        """Start again from the base delay: the last try succeeded."""
        self.failures = 0


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait for `event` at most `timeout_s` seconds; whether it was set."""
    if event.is_set():
        return True
    try:
        await asyncio.wait_for(event.wait(), max(0.0, timeout_s))
    except TimeoutError:
        return False
    return True
