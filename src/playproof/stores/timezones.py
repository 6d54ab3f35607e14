"""A time zone's UTC offset over a time range, as pieces the report SQL can use.

A named zone's offset changes at its transitions (daylight saving, law). The
delivery report groups plays by the local hour or day of their start, so it
needs, for the range asked, every offset in force and the instants at which
it changes: found here by stepping through the range and bisecting each
change to the second (tzdata's transitions fall on whole seconds).
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Final

STEP_S: Final = 6 * 3600  # no zone has changed its offset twice within six hours

Pieces = tuple[tuple[int, int], ...]


def offset_ms(zone: tzinfo, at_s: int) -> int:
    """The zone's UTC offset, in milliseconds, at an instant in epoch seconds."""
    offset = datetime.fromtimestamp(at_s, UTC).astimezone(zone).utcoffset()
    return 0 if offset is None else int(offset.total_seconds() * 1000)


def _transition(zone: tzinfo, lo: int, hi: int) -> int:
    """The first second in (lo, hi] whose offset differs from lo's."""
    before = offset_ms(zone, lo)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if offset_ms(zone, mid) == before:
            lo = mid
        else:
            hi = mid
    return hi


def offset_pieces(zone: tzinfo, start_ms: int, end_ms: int) -> Pieces:
    """`((since_ms, offset_ms), ...)`: the offset in force from each `since` over [start, end)."""
    first = start_ms // 1000
    pieces = [(start_ms, offset_ms(zone, first))]
    last = -(-end_ms // 1000)
    at = first
    while at < last:
        nxt = min(at + STEP_S, last)
        while offset_ms(zone, nxt) != pieces[-1][1]:
            change = _transition(zone, at, nxt)
            pieces.append((change * 1000, offset_ms(zone, change)))
            at = change
        at = nxt
    return (pieces[0], *(p for p in pieces[1:] if p[0] < end_ms))
