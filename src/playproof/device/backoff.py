"""Waiting: the retry policy (a pure function), its state, and waiting on an event with a limit.

The policy, after `n` failures in a row (`retry_delay`):

- no `Retry-After`: full jitter, uniform in [0, min(cap, base·2ⁿ)]. The cap is low
  (5 s by default) because a screen must send soon after the network or the service
  comes back; the jitter spreads a fleet's returns evenly over the window rather
  than in step.
- a `Retry-After` of `r` seconds (HTTP header, the stream's `retry_after_ms`): never
  sooner than `r`, and spread over [r, r + max(min(cap, base·2ⁿ), r/2)], so that a
  million screens told the same `r` come back over a while, not at the same instant.
"""

from __future__ import annotations

import asyncio
import random
from typing import Final

# A Retry-After of r seconds is spread over at least r·RETRY_AFTER_SPREAD more.
RETRY_AFTER_SPREAD: Final = 0.5
# Doublings past this change nothing (the cap is reached) and would overflow a float.
_MAX_DOUBLINGS: Final = 32


def retry_delay(
    failures: int, jitter: float, *, base_s: float, cap_s: float, retry_after_s: float = 0.0
) -> float:
    """Seconds to wait after `failures` failures in a row; `jitter` is uniform in [0, 1)."""
    ceiling = min(cap_s, base_s * 2.0 ** min(max(failures, 0), _MAX_DOUBLINGS))
    if retry_after_s <= 0:
        return jitter * ceiling
    return retry_after_s + jitter * max(ceiling, retry_after_s * RETRY_AFTER_SPREAD)


class Backoff:
    """The retry policy's state: failures in a row, reset by the first answer."""

    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self, retry_after_s: float = 0.0) -> float:
        """The delay before the next try; never under `retry_after_s` (the service's ask)."""
        delay = retry_delay(
            self.failures,
            self._rng.random(),
            base_s=self.base_s,
            cap_s=self.cap_s,
            retry_after_s=retry_after_s,
        )
        self.failures += 1
        return delay

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
