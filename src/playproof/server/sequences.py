"""Sequence health per device: high-water marks, open gaps, lost ranges, resets.

The store keeps the raw state (high-water mark and gap ranges per journal);
whether a gap is still open or has become a loss depends on the time of asking,
so it is decided here, when asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from playproof.rules import DEFAULT_POLICY, Policy, is_lost
from playproof.stores.base import JournalInfo


def journal_health(
    journal: JournalInfo, now_ms: int, policy: Policy = DEFAULT_POLICY
) -> dict[str, Any]:
    """One journal's high-water mark, open gaps and lost ranges as plain values."""
    open_gaps: list[list[int]] = []
    lost: list[list[int]] = []
    for gap in journal.gaps:
        (lost if is_lost(gap, now_ms, policy) else open_gaps).append([gap.first, gap.last])
    return {
        "journal_id": journal.journal_id,
        "high_water": journal.high_water,
        "first_seen": journal.first_seen,
        "last_seen": journal.last_seen,
        "open_gaps": open_gaps,
        "lost_ranges": lost,
        "missing": sum(last - first + 1 for first, last in open_gaps),
        "lost": sum(last - first + 1 for first, last in lost),
    }


def device_sequences(
    journals: Sequence[JournalInfo], now_ms: int, policy: Policy = DEFAULT_POLICY
) -> dict[str, Any]:
    """A device's sequence health over all its journals; each journal after the first is a reset."""
    ordered = sorted(journals, key=lambda j: (j.first_seen, j.journal_id))
    views = [journal_health(j, now_ms, policy) for j in ordered]
    return {
        "journals": views,
        "resets": max(0, len(views) - 1),
        "current_journal": views[-1]["journal_id"] if views else None,
        "high_water": views[-1]["high_water"] if views else 0,
        "open_gaps": sum(len(v["open_gaps"]) for v in views),
        "lost": sum(v["lost"] for v in views),
    }
