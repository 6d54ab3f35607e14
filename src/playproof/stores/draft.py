"""Commit plans drafted where a batch is judged, so the store's single writer does less.

Planning a batch (rows, acks, rejects, sequence arrivals, rollup sums) is pure
Python; done inside the commit it holds up the one writer while the event loop
has time to spare. So each batch is planned once when it is judged, as if
nothing of it were stored yet. At commit, when none of the group's sequences
can already be stored (all are above their journal's high-water mark) and no
key repeats across the group's batches, the drafts are merged as they are:
that is exactly what planning the group afresh would give. Otherwise the
group is planned afresh, so the drafts never decide anything on their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from playproof.protocol import Record
from playproof.rules import key_trusted
from playproof.stores.base import BatchWrite, CommitPlan, Key, plan_commit
from playproof.stores.rollup import Delta, Rollup, Sums, deltas, merge_sums, rollup_sums


class Draft(NamedTuple):
    """One batch planned as if nothing of it were stored yet."""

    plan: CommitPlan
    sums: Sums
    keys: frozenset[Key]


class GroupPlan(NamedTuple):
    """What a group commit writes: the plan and the rollup rows to add."""

    plan: CommitPlan
    rollups: dict[Rollup, list[Delta]]


def draft(write: BatchWrite) -> Draft:
    """Plan one batch alone, against an empty store."""
    plan = plan_commit([write], {})
    keys = frozenset(
        (item.device_id, item.journal_id, item.seq)
        for item, verdict in write.judged
        if isinstance(item, Record) and key_trusted(verdict.reason)
    )
    return Draft(plan, rollup_sums(plan.impressions), keys)


def with_draft(write: BatchWrite) -> BatchWrite:
    """The batch with its draft attached."""
    return write._replace(draft=draft(write))


def plan_group(writes: Sequence[BatchWrite], existing: Mapping[Key, str]) -> GroupPlan:
    """The group's plan: merged from the drafts when they are exact, else planned afresh."""
    drafts: list[Any] = [write.draft for write in writes]
    if existing or any(d is None for d in drafts) or _overlap(drafts):
        plan = plan_commit(writes, existing)
        return GroupPlan(plan, deltas(rollup_sums(plan.impressions)))
    return GroupPlan(_merge([d.plan for d in drafts]), deltas(merge_sums(d.sums for d in drafts)))


def _overlap(drafts: Sequence[Draft]) -> bool:
    return sum(len(d.keys) for d in drafts) != len(frozenset().union(*(d.keys for d in drafts)))


def _merge(plans: Sequence[CommitPlan]) -> CommitPlan:
    merged = CommitPlan()
    for plan in plans:
        merged.acks.extend(plan.acks)
        merged.impressions.extend(plan.impressions)
        merged.rejects.extend(plan.rejects)
        for journal, arrivals in plan.arrivals.items():
            merged.arrivals.setdefault(journal, []).extend(arrivals)
    return merged
