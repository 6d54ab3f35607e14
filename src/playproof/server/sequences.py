"""Sequence health per device: high-water marks, open gaps, lost ranges, resets.

The store keeps the raw state (high-water mark and gap ranges per journal);
whether a gap is still open or has become a loss depends on the time of asking,
so it is decided here, when asked. A sequence the device reported evicted
(`evicted_ranges` of its status) will never arrive and was never lost: it is
accounted once, as evicted, and is neither an open gap nor a lost one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, TypeAlias

from playproof.rules import DEFAULT_POLICY, Policy, is_lost
from playproof.stores.base import JournalInfo

# (journal_id, first_seq, last_seq), as the store keeps a device's reported evictions.
EvictedRanges: TypeAlias = Sequence[tuple[str, int, int]]


def merged(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Ranges sorted, with overlapping or touching ones joined."""
    out: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


def outside(first: int, last: int, covered: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of `first..last` that no range of `covered` (merged, sorted) holds."""
    pieces: list[tuple[int, int]] = []
    for low, high in covered:
        if high < first or low > last:
            continue
        if low > first:
            pieces.append((first, low - 1))
        first = high + 1
    if first <= last:
        pieces.append((first, last))
    return pieces


def evicted_count(ranges: EvictedRanges) -> int:
    """Distinct sequences evicted: a range reported twice, or grown and resent, counts once."""
    return sum(
        last - first + 1 for journal in _by_journal(ranges).values() for first, last in journal
    )


def _by_journal(ranges: EvictedRanges) -> dict[str, list[tuple[int, int]]]:
    grouped: defaultdict[str, list[tuple[int, int]]] = defaultdict(list)
    for journal_id, first, last in ranges:
        grouped[journal_id].append((first, last))
    return {journal_id: merged(found) for journal_id, found in grouped.items()}


def journal_health(
    journal: JournalInfo,
    now_ms: int,
    policy: Policy = DEFAULT_POLICY,
    evicted: Sequence[tuple[int, int]] = (),
) -> dict[str, Any]:
    """One journal's high-water mark, open gaps and lost ranges as plain values.

    `evicted`: the journal's ranges the device reported evicted (merged, sorted),
    taken out of its gaps. A `suspect` journal had gaps merged past the cap
    (Policy.max_open_gaps): its `missing` and `lost` are upper bounds.
    """
    open_gaps: list[list[int]] = []
    lost: list[list[int]] = []
    for gap in journal.gaps:
        kind = lost if is_lost(gap, now_ms, policy) else open_gaps
        kind.extend([first, last] for first, last in outside(gap.first, gap.last, evicted))
    return {
        "journal_id": journal.journal_id,
        "high_water": journal.high_water,
        "first_seen": journal.first_seen,
        "last_seen": journal.last_seen,
        "suspect": journal.suspect,
        "open_gaps": open_gaps,
        "lost_ranges": lost,
        "missing": sum(last - first + 1 for first, last in open_gaps),
        "lost": sum(last - first + 1 for first, last in lost),
    }


def device_sequences(
    journals: Sequence[JournalInfo],
    now_ms: int,
    policy: Policy = DEFAULT_POLICY,
    evicted: EvictedRanges = (),
) -> dict[str, Any]:
    """A device's sequence health over all its journals; each journal after the first is a reset.

    `evicted`: the device's reported evictions, which are neither open gaps nor lost.
    """
    ordered = sorted(journals, key=lambda j: (j.first_seen, j.journal_id))
    by_journal = _by_journal(evicted)
    views = [journal_health(j, now_ms, policy, by_journal.get(j.journal_id, ())) for j in ordered]
    return {
        "journals": views,
        "resets": max(0, len(views) - 1),
        "current_journal": views[-1]["journal_id"] if views else None,
        "high_water": views[-1]["high_water"] if views else 0,
        "open_gaps": sum(len(v["open_gaps"]) for v in views),
        "lost": sum(v["lost"] for v in views),
        "suspect": any(v["suspect"] for v in views),
    }
