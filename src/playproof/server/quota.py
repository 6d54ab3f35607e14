"""Screenshot quotas: the bytes a device may upload in a UTC day, sized from its own plays.

A screen takes one proof screenshot per play, so what it may send grows with
what it played: `screenshot_bytes x (floor + per_play x plays)`, the plays being
those of the device stored with a `start_ts` that day (on the service clock),
and the floor leaving room for a screen that has only begun its day (or sends
yesterday's last screenshots). With the defaults (10 MiB, 5 and 2) a device that
played nothing may send 50 MiB, and each play adds 20 MiB: a screen never
reaches it by taking screenshots, a device uploading without playing does.

Every byte accepted for checking counts, a second upload of a stored screenshot
too (it cost the same to receive). A device over its quota is answered 429 with
`Retry-After`; the count of refusals of the day is kept in memory, per device,
for device health. Usage is in memory as well: a restart forgives the day so far,
in the devices' favour only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from playproof.errors import RateLimited
from playproof.rules import HOUR_MS
from playproof.server.ingest import Clock
from playproof.stores import queries
from playproof.stores.base import Store

DAY_MS: Final = 24 * HOUR_MS
# A device's plays are counted again at most this often (a count costs a store read).
PLAYS_REFRESH_S: Final = 30.0
# Before refusing, a count older than this is read again: the device may have played since.
REFUSAL_REFRESH_S: Final = 2.0
# The quota grows with every play, so a refused device is asked back within minutes,
# and at the latest at midnight UTC, when the day starts afresh.
MAX_RETRY_S: Final = 300.0


@dataclass
class _Day:
    """One device's screenshot day."""

    day: int
    used: int = 0
    plays: int = 0
    counted_at: float = float("-inf")
    refused: int = 0


def plays_sql(store: Store) -> str:
    """How many plays of a device started in a time range (the (device_id, start_ts) index)."""
    ph = queries.placeholder(store)
    return (
        f"SELECT count(*) FROM impressions "
        f"WHERE device_id = {ph} AND start_ts >= {ph} AND start_ts < {ph}"
    )


class ScreenshotQuota:
    """Per device and UTC day: bytes accepted, plays counted, refusals."""

    def __init__(
        self, store: Store, screenshot_bytes: int, floor: int, per_play: int, clock: Clock
    ) -> None:
        self._store = store
        self._unit = screenshot_bytes
        self._floor = floor
        self._per_play = per_play
        self._clock = clock
        self._today = -1
        self._days: dict[str, _Day] = {}

    async def check(self, device_id: str, size: int) -> None:
        """Raise RateLimited (429) unless the device may upload `size` more bytes today."""
        entry = self._entry(device_id)
        age = time.monotonic() - entry.counted_at
        if age > PLAYS_REFRESH_S or (age > REFUSAL_REFRESH_S and self._over(entry, size)):
            await self._count_plays(device_id, entry)
        if self._over(entry, size):
            self._refuse(device_id, entry, size)

    def charge(self, device_id: str, size: int) -> None:
        """Count `size` bytes received against today; RateLimited if they no longer fit."""
        entry = self._entry(device_id)
        if self._over(entry, size):
            self._refuse(device_id, entry, size)
        entry.used += size

    def refund(self, device_id: str, size: int) -> None:
        """Give back bytes charged for an upload the service failed to keep."""
        entry = self._entry(device_id)
        entry.used = max(0, entry.used - size)

    def refused(self) -> dict[str, int]:
        """Today's refusals per device (those refused at least once)."""
        self._roll_day()
        return {d: e.refused for d, e in self._days.items() if e.refused}

    def _allowance(self, entry: _Day) -> int:
        return self._unit * (self._floor + self._per_play * entry.plays)

    def _over(self, entry: _Day, size: int) -> bool:
        return entry.used + size > self._allowance(entry)

    def _refuse(self, device_id: str, entry: _Day, size: int) -> None:
        entry.refused += 1
        to_midnight_s = ((entry.day + 1) * DAY_MS - self._clock()) / 1000
        raise RateLimited(
            f"expected at most {self._allowance(entry)} screenshot bytes today from device "
            f"{device_id!r} ({self._floor} + {self._per_play} per play of its "
            f"{entry.plays} today, of {self._unit} bytes), got {entry.used} and {size} more",
            max(1.0, min(MAX_RETRY_S, to_midnight_s)),
        )

    async def _count_plays(self, device_id: str, entry: _Day) -> None:
        start = entry.day * DAY_MS
        params = (device_id, start, start + DAY_MS)
        rows = await self._store.read_rows(plays_sql(self._store), params)
        entry.plays = int(rows[0][0]) if rows else 0
        entry.counted_at = time.monotonic()

    def _entry(self, device_id: str) -> _Day:
        today = self._roll_day()
        entry = self._days.get(device_id)
        if entry is None or entry.day != today:
            entry = self._days[device_id] = _Day(today)
        return entry

    def _roll_day(self) -> int:
        today = self._clock() // DAY_MS
        if today != self._today:
            # A new day: every device starts afresh, and yesterday's entries go.
            self._today, self._days = today, {}
        return today
