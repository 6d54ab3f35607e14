"""Per-device rate limits and stream connection caps, so no caller can hold the service."""

from __future__ import annotations

import time
from collections.abc import Callable

from playproof.errors import RateLimited


class RateLimiter:
    """A token bucket per device: `rate` units a second, bursts of up to `burst`.

    The unit is a request (`device_rate`) or a body byte (`device_bytes_rate`: a request
    costs its size, so that a device's share of the service's reading and decoding is
    bounded by what it sends, not by how many times).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        unit: str = "requests",
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._unit = unit
        self._buckets: dict[str, tuple[float, float]] = {}
        self._checks = 0

    def check(self, device_id: str, cost: float = 1.0) -> None:
        """Spend `cost` of the device's bucket, or raise RateLimited with the wait."""
        wait = self.wait(device_id, cost)
        if wait > 0:
            raise RateLimited(
                f"expected at most {self._rate:g} {self._unit} a second from device "
                f"{device_id!r}, got more; retry after {wait:.1f} s",
                wait,
            )
        self.spend(device_id, cost)

    def wait(self, key: str, cost: float = 1.0) -> float:
        """Seconds until `key`'s bucket holds `cost` again; 0 when it holds it now.

        A cost over the burst is waited for as if it were the burst: the bucket holds no
        more, and refusing it for ever would refuse the device for ever.
        """
        need = min(cost, self._burst)
        tokens = self._tokens(key, self._clock())
        return 0.0 if tokens >= need else (need - tokens) / self._rate

    def spend(self, key: str, cost: float = 1.0) -> None:
        """Take `cost` from `key`'s bucket (an empty bucket stays empty)."""
        now = self._clock()
        self._buckets[key] = (max(0.0, self._tokens(key, now) - cost), now)
        self._checks += 1
        if self._checks % 100_000 == 0:
            self._forget_full(now)

    def _tokens(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (self._burst, now))
        return min(self._burst, tokens + (now - last) * self._rate)

    def _forget_full(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket: drop it, so that
        # a million devices do not each keep an entry forever.
        refill = self._burst / self._rate
        self._buckets = {d: b for d, b in self._buckets.items() if now - b[1] < refill}


class ConnectionLimiter:
    """Caps on open stream connections, in total and per device."""

    def __init__(self, total: int, per_device: int) -> None:
        self._total = total
        self._per_device = per_device
        self._open: dict[str, int] = {}
        self._count = 0

    def acquire(self, device_id: str) -> str | None:
        """Take a place for the device; the reason it is refused, or None if admitted."""
        if self._count >= self._total:
            return f"the service holds {self._total} stream connections, its limit"
        if self._open.get(device_id, 0) >= self._per_device:
            return f"device {device_id!r} already holds {self._per_device} stream connections"
        self._open[device_id] = self._open.get(device_id, 0) + 1
        self._count += 1
        return None

    def release(self, device_id: str) -> None:
        """Give back a place taken by `acquire`."""
        left = self._open.get(device_id, 0) - 1
        if left > 0:
            self._open[device_id] = left
        else:
            self._open.pop(device_id, None)
        self._count -= 1
