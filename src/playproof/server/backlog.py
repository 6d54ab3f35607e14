"""The backlog: what the service holds between reading a batch and answering it.

A batch read from a socket is decoded, judged and queued for the group
committer; until its acks leave, its body and its records are in memory. The
backlog counts both, in total and per device, and refuses a batch that would
take it past `max_records` or `max_bytes` (`Overloaded`: HTTP 503, a stream
frame error with `retry_after_ms`), so that no flood, and no store that has
stopped committing, can take the service's memory.

Fairness: the last eighth of the backlog (`RESERVE`) is kept for devices holding
little: a device may take from it only while it holds at most a 1/(n+1) share of
the reserve, n being the devices holding something (itself included). Big batches
thus fill at most seven eighths, and a screen sending a frame of a few records finds
room however a flood of big frames fills the rest (64 MiB / 8 / 52 devices: 157 KiB
a device with 51 holders). Without the reserve, frames a flood had taken while the
backlog was under half full (any device may add then) and then its devices' shares
past half full could take the backlog to its brim, and a screen's 1 KiB frame was
refused for as long as the flood lasted.

Past half full, too, a device may add only while it holds at most a 1/(n+1) share
of the whole, so that a flood from many tokens shares the backlog rather than one
token taking it all (the stream also leaves a refused connection unread for a
while, stream.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from playproof.errors import Overloaded

# The part of the backlog kept for devices holding little (see the module's docstring).
RESERVE = 1 / 8


class Backlog:
    """Records and body bytes held from reading to answering, bounded in total and per device."""

    def __init__(self, max_records: int, max_bytes: int, retry_after_s: float = 1.0) -> None:
        self._max = (max_records, max_bytes)
        self._reserve = (max_records * RESERVE, max_bytes * RESERVE)
        self._retry_after_s = retry_after_s
        self._records = 0
        self._bytes = 0
        self._held: dict[str, tuple[int, int]] = {}

    @property
    def records(self) -> int:
        """Records held now."""
        return self._records

    @property
    def bytes(self) -> int:
        """Body bytes held now."""
        return self._bytes

    def check(self, device_id: str, records: int, nbytes: int) -> None:
        """Raise Overloaded unless a batch of this size from this device would be taken now."""
        refusal = self._refusal(device_id, records, nbytes)
        if refusal is not None:
            raise Overloaded(
                f"the service is overloaded ({refusal}); retry after {self._retry_after_s:g} s",
                self._retry_after_s,
            )

    def take(self, device_id: str, records: int, nbytes: int) -> None:
        """Count a batch as held, until `release`; Overloaded if it may not be."""
        self.check(device_id, records, nbytes)
        self._add(device_id, records, nbytes)

    def release(self, device_id: str, records: int, nbytes: int) -> None:
        """A batch `take` counted is answered."""
        self._add(device_id, -records, -nbytes)

    @contextlib.contextmanager
    def hold(self, device_id: str, records: int, nbytes: int) -> Iterator[None]:
        """Count a batch as held until the block ends; Overloaded if it may not be."""
        self.take(device_id, records, nbytes)
        try:
            yield
        finally:
            self.release(device_id, records, nbytes)

    def _add(self, device_id: str, records: int, nbytes: int) -> None:
        self._records += records
        self._bytes += nbytes
        held_records, held_bytes = self._held.get(device_id, (0, 0))
        held = (held_records + records, held_bytes + nbytes)
        if held == (0, 0):
            self._held.pop(device_id, None)
        else:
            self._held[device_id] = held

    def _refusal(self, device_id: str, records: int, nbytes: int) -> str | None:
        total = (self._records + records, self._bytes + nbytes)
        if total[0] > self._max[0] or total[1] > self._max[1]:
            return (
                f"it holds {self._records} records and {self._bytes} bytes, "
                f"at most {self._max[0]} and {self._max[1]}"
            )
        # Under half full, anything that fits is taken (the reserve is past seven eighths):
        # the common case, every frame, decided without the device's holdings.
        if total[0] * 2 <= self._max[0] and total[1] * 2 <= self._max[1]:
            return None
        held_records, held_bytes = self._held.get(device_id, (0, 0))
        share = len(self._held) + (device_id not in self._held) + 1
        mine = (held_records + records, held_bytes + nbytes)
        if mine[0] * share <= self._reserve[0] and mine[1] * share <= self._reserve[1]:
            return None
        if total[0] > self._max[0] - self._reserve[0] or total[1] > self._max[1] - self._reserve[1]:
            return (
                f"its last {RESERVE:.1%} is kept for devices holding less than a 1/{share} "
                f"share of that; device {device_id!r} would hold {mine[0]} records and "
                f"{mine[1]} bytes"
            )
        if mine[0] * share > self._max[0] or mine[1] * share > self._max[1]:
            return f"device {device_id!r} would hold more than its 1/{share} share of the backlog"
        return None
