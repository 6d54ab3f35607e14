"""Plans drafted at judge time give exactly what planning the group at commit gives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from playproof import protocol
from playproof.rules import HOUR_MS, Context, Judge
from playproof.stores.base import BatchWrite, Judged
from playproof.stores.draft import plan_group, with_draft
from tests.support import make_record

NOW = 1_795_481_423_123

records = st.builds(
    lambda seq, content, journal, age, device: make_record(
        device_id=device,
        journal_id=journal,
        seq=seq,
        content_id=content,
        end_ts=NOW - age,
        start_ts=NOW - age - 15_000,
    ),
    seq=st.integers(1, 12),
    content=st.sampled_from(["cnt-1", "cnt-2"]),
    journal=st.sampled_from(["j-1", "j-2"]),
    age=st.sampled_from([1000, 2 * HOUR_MS, 5 * HOUR_MS]),
    device=st.sampled_from(["scr-1", "scr-1", "scr-2"]),
)


def write_of(batch: list[protocol.Record]) -> BatchWrite:
    judge = Judge(Context("scr-1", "store-1", NOW, NOW))
    judged = [Judged(r, judge(r)) for r in batch]
    return BatchWrite("scr-1", NOW, NOW, judged)


@settings(max_examples=300, deadline=None)
@given(
    batches=st.lists(st.lists(records, max_size=6), min_size=1, max_size=4),
    stored=st.dictionaries(
        st.tuples(st.just("scr-1"), st.just("j-1"), st.integers(1, 12)),
        st.sampled_from(["a" * 64, "b" * 64]),
        max_size=3,
    ),
)
def test_drafts_merge_to_the_plan_made_at_commit(
    batches: list[list[protocol.Record]], stored: dict[tuple[str, str, int], str]
) -> None:
    plain = [write_of(b) for b in batches]
    drafted = [with_draft(w) for w in plain]
    for existing in ({}, stored):
        fresh, fresh_rollups = plan_group(plain, existing)
        merged, merged_rollups = plan_group(drafted, existing)
        assert merged.acks == fresh.acks
        assert sorted(merged.impressions) == sorted(fresh.impressions)
        assert sorted(merged.rejects) == sorted(fresh.rejects)
        assert {k: sorted(v) for k, v in merged.arrivals.items()} == {
            k: sorted(v) for k, v in fresh.arrivals.items()
        }
        assert merged_rollups == fresh_rollups
