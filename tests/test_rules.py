"""The rules of PROTOCOL.md section 5, with hypothesis pinning every boundary."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from playproof.rules import (
    DEFAULT_POLICY,
    HOUR_MS,
    MINUTE_MS,
    Context,
    Gap,
    Policy,
    SequenceState,
    advance,
    is_lost,
    judge,
    play_status,
    quality,
    skew_band,
)
from playproof.stores.base import gap_window
from tests.support import make_record

NOW = 1_795_481_423_123
expected_ms = st.integers(min_value=1, max_value=10**9)
skews = st.integers(min_value=0, max_value=24 * HOUR_MS)


def ctx(sent_at: int = NOW, received_at: int = NOW, store: str | None = "store-1") -> Context:
    return Context("scr-1", store, sent_at, received_at)


@given(expected=expected_ms)
def test_exactly_80_percent_completed_is_valid(expected: int) -> None:
    exact = -(-expected * 80 // 100)  # the smallest duration with duration*100 >= 80*expected
    assert play_status(make_record(expected_ms=expected, duration_ms=exact)) == "valid"
    assert play_status(make_record(expected_ms=expected, duration_ms=exact - 1)) == "partial"


@given(
    expected=expected_ms,
    reason=st.sampled_from(["skipped", "interrupted", "error", "device_restart"]),
)
def test_anything_but_completed_is_partial_however_long(expected: int, reason: str) -> None:
    assert (
        play_status(make_record(expected_ms=expected, duration_ms=expected, end_reason=reason))
        == "partial"
    )


@given(skew=skews, sign=st.sampled_from([1, -1]))
def test_clock_bands_at_exactly_10_and_30_minutes(skew: int, sign: int) -> None:
    band = skew_band(sign * skew)
    if skew <= 10 * MINUTE_MS:
        assert band == "ok"
    elif skew <= 30 * MINUTE_MS:
        assert band == "flag"
    else:
        assert band == "reject"


def test_clock_band_edges_exactly() -> None:
    assert skew_band(10 * MINUTE_MS) == "ok" and skew_band(-10 * MINUTE_MS) == "ok"
    assert skew_band(10 * MINUTE_MS + 1) == "flag" and skew_band(30 * MINUTE_MS) == "flag"
    assert skew_band(-30 * MINUTE_MS - 1) == "reject"


@given(
    skew=st.integers(min_value=30 * MINUTE_MS + 1, max_value=48 * HOUR_MS),
    sign=st.sampled_from([1, -1]),
)
def test_a_batch_skewed_past_30_minutes_is_rejected_whatever_its_records(
    skew: int, sign: int
) -> None:
    sent_at = NOW + sign * skew
    record = make_record(end_ts=sent_at - 1000)
    assert judge(record, ctx(sent_at=sent_at)).reason == "clock_skew"


@given(skew=st.integers(min_value=10 * MINUTE_MS + 1, max_value=30 * MINUTE_MS))
def test_a_skew_between_10_and_30_minutes_is_accepted_with_a_flag(skew: int) -> None:
    record = make_record(end_ts=NOW + skew - 1000)
    verdict = judge(record, ctx(sent_at=NOW + skew))
    assert verdict.accepted and "clock_skew" in verdict.flags and verdict.quality < 100


@given(
    past=st.integers(min_value=-(10**9), max_value=10**9),
    skew=st.integers(-30 * MINUTE_MS, 30 * MINUTE_MS),
)
def test_an_end_more_than_1_second_past_sent_at_is_a_future_timestamp(past: int, skew: int) -> None:
    sent_at = NOW + skew
    end = sent_at + past
    verdict = judge(make_record(end_ts=end, start_ts=end - 15_000), ctx(sent_at=sent_at))
    assert (verdict.reason == "future_timestamp") == (past > 1000)


@given(
    age=st.integers(min_value=-1000, max_value=12 * HOUR_MS),
    skew=st.integers(-30 * MINUTE_MS, 30 * MINUTE_MS),
)
def test_staleness_is_sent_at_minus_end_past_exactly_4_hours(age: int, skew: int) -> None:
    sent_at = NOW + skew  # the device's clock: skew must neither age nor rejuvenate
    end = sent_at - age
    verdict = judge(make_record(end_ts=end, start_ts=end - 15_000), ctx(sent_at=sent_at))
    assert (verdict.reason == "stale") == (age > 4 * HOUR_MS)


def test_start_after_end_is_invalid() -> None:
    verdict = judge(make_record(start_ts=NOW - 10, end_ts=NOW - 20), ctx())
    assert verdict.reason == "invalid"
    assert verdict.detail == f"expected start_ts at most end_ts, got {NOW - 10} > {NOW - 20}"


# --- bounds: one device must not be able to overflow everyone's sums ------------------

DAY_MS = 24 * HOUR_MS
MAX_INT = 2**53 - 1
EARLIEST = 946_684_800_000  # 2000-01-01T00:00:00Z
LATEST = 4_102_444_800_000  # 2100-01-01T00:00:00Z


@given(
    field=st.sampled_from(["duration_ms", "expected_ms"]),
    value=st.integers(min_value=DAY_MS + 1, max_value=MAX_INT),
)
@example(field="duration_ms", value=MAX_INT)
@example(field="expected_ms", value=DAY_MS + 1)
def test_a_duration_or_expected_length_past_24_hours_is_invalid_saying_so(
    field: str, value: int
) -> None:
    verdict = judge(make_record(end_ts=NOW - 1000, **{field: value}), ctx())
    assert verdict.reason == "invalid"
    assert verdict.detail == f"expected {field} of at most 86400000, got {value}"


@given(duration=st.integers(0, DAY_MS), expected=st.integers(1, DAY_MS))
@example(duration=DAY_MS, expected=DAY_MS)
def test_durations_and_expected_lengths_up_to_24_hours_are_accepted(
    duration: int, expected: int
) -> None:
    record = make_record(end_ts=NOW - 1000, duration_ms=duration, expected_ms=expected)
    assert judge(record, ctx()).accepted


near_bounds = (
    st.integers(EARLIEST - 2 * DAY_MS, EARLIEST + DAY_MS)
    | st.integers(LATEST - 2 * DAY_MS, LATEST + DAY_MS)
    | st.integers(1, MAX_INT - DAY_MS)
)


@given(start=near_bounds, length=st.integers(0, DAY_MS))
@example(start=EARLIEST, length=0)
@example(start=EARLIEST - 1, length=5)
@example(start=LATEST - 10, length=10)
@example(start=LATEST - 10, length=11)
def test_a_play_outside_2000_to_2100_is_invalid_saying_which_time(start: int, length: int) -> None:
    end = start + length
    # Sent as it ended, so that only the bounds can refuse it.
    verdict = judge(make_record(start_ts=start, end_ts=end), ctx(sent_at=end, received_at=end))
    if start >= EARLIEST and end <= LATEST:
        assert verdict.accepted
        return
    assert verdict.reason == "invalid"
    name, value = ("end_ts", end) if EARLIEST <= start <= LATEST else ("start_ts", start)
    assert verdict.detail == f"expected {name} between {EARLIEST} and {LATEST}, got {value}"


def test_the_bounds_are_policy_and_come_after_forbidden_before_the_clock_rules() -> None:
    hour = make_record(end_ts=NOW - 1000, duration_ms=HOUR_MS, expected_ms=HOUR_MS)
    strict = Policy(max_duration_ms=HOUR_MS - 1, min_timestamp_ms=NOW, max_timestamp_ms=NOW + 1)
    assert judge(hour, ctx()).accepted
    assert judge(hour, ctx(), strict).detail == (
        f"expected duration_ms of at most {HOUR_MS - 1}, got {HOUR_MS}"
    )
    early = make_record(end_ts=NOW - 1000)
    assert judge(early, ctx(), strict).detail.startswith(f"expected start_ts between {NOW} and")
    huge = make_record(end_ts=NOW - 1000, duration_ms=MAX_INT)
    assert judge(huge, Context("scr-2", "store-1", NOW, NOW)).reason == "forbidden"
    skewed = judge(huge, ctx(sent_at=NOW + HOUR_MS))
    assert (skewed.reason, skewed.detail) == (
        "invalid",
        f"expected duration_ms of at most {DAY_MS}, got {MAX_INT}",
    )


def test_a_policy_may_lower_the_duration_bound_but_not_raise_it_past_24_hours() -> None:
    assert Policy(max_duration_ms=1).max_duration_ms == 1
    for bad in (0, DAY_MS + 1):
        with pytest.raises(ValueError, match=r"max_duration_ms must be in 1\.\.86400000"):
            Policy(max_duration_ms=bad)
    with pytest.raises(ValueError, match="min_timestamp_ms < max_timestamp_ms"):
        Policy(min_timestamp_ms=LATEST, max_timestamp_ms=LATEST)


def test_a_record_for_another_device_is_forbidden() -> None:
    assert judge(make_record(device_id="scr-2"), ctx()).reason == "forbidden"


def test_flags_each_lower_quality() -> None:
    base = make_record(end_ts=NOW - 1000)
    assert judge(base, ctx()).flags == () and judge(base, ctx()).quality == 100
    cases = {
        "clock_unsynced": make_record(end_ts=NOW - 1000, clock_synced=False),
        "duration_mismatch": make_record(end_ts=NOW - 1000, start_ts=NOW - 60_000),
        "overlong": make_record(end_ts=NOW - 1000, start_ts=NOW - 61_000, duration_ms=60_000),
        "store_mismatch": make_record(end_ts=NOW - 1000, store_id="store-9"),
    }
    for flag, record in cases.items():
        verdict = judge(record, ctx())
        assert flag in verdict.flags and verdict.quality < 100, flag


@given(
    flags=st.lists(
        st.sampled_from(
            ["clock_skew", "clock_unsynced", "duration_mismatch", "overlong", "store_mismatch"]
        ),
        unique=True,
    )
)
def test_quality_stays_between_0_and_100(flags: list[str]) -> None:
    assert 0 <= quality(tuple(flags)) <= 100


def test_every_threshold_is_policy() -> None:
    strict = Policy(offline_limit_ms=HOUR_MS, valid_percent=100)
    record = make_record(end_ts=NOW - 2 * HOUR_MS, start_ts=NOW - 2 * HOUR_MS - 15_000)
    assert judge(record, ctx(), DEFAULT_POLICY).accepted
    assert judge(record, ctx(), strict).reason == "stale"
    assert play_status(make_record(duration_ms=14_999), strict) == "partial"


# --- sequences ---------------------------------------------------------------

arrival_lists = st.lists(st.lists(st.integers(min_value=1, max_value=60), max_size=12), max_size=8)


@given(batches=arrival_lists)
def test_gaps_are_exactly_the_sequences_below_high_water_never_received(
    batches: list[list[int]],
) -> None:
    state = SequenceState(0, 0, ())
    received: set[int] = set()
    for batch in batches:
        state = advance(state, [(s, s * 1000) for s in batch]).state
        received.update(batch)
    high = max(received, default=0)
    assert state.high_water == high
    in_gaps = {s for g in state.gaps for s in range(g.first, g.last + 1)}
    assert in_gaps == set(range(1, high + 1)) - received
    firsts = [g.first for g in state.gaps]
    assert firsts == sorted(firsts)


@given(batches=arrival_lists)
def test_closed_and_opened_gaps_replay_to_the_new_state(batches: list[list[int]]) -> None:
    state = SequenceState(0, 0, ())
    stored: set[Gap] = set()
    for batch in batches:
        change = advance(state, [(s, s) for s in batch])
        stored = (stored - set(change.closed)) | set(change.opened)
        state = change.state
        assert stored == set(state.gaps)


caps = st.integers(min_value=1, max_value=6)


@given(batches=arrival_lists, cap=caps)
def test_a_capped_journal_never_holds_more_gaps_and_its_gaps_cover_every_missing_one(
    batches: list[list[int]], cap: int
) -> None:
    """Past the cap gaps merge (an upper bound, marked suspect); below it they stay exact."""
    state = SequenceState(0, 0, ())
    received: set[int] = set()
    for batch in batches:
        state = advance(state, [(s, s * 1000) for s in batch], cap).state
        received.update(batch)
        assert len(state.gaps) == state.gap_count <= cap
        in_gaps = {s for g in state.gaps for s in range(g.first, g.last + 1)}
        missing = set(range(1, state.high_water + 1)) - received
        assert missing <= in_gaps
        assert state.suspect or in_gaps == missing
        assert state.suspect == (state.suspect and bool(state.gaps))


@example(batches=[[1, 3, 5, 7], [2, 6], [4]], cap=2)
@given(batches=arrival_lists, cap=st.none() | caps)
def test_advancing_only_the_gaps_in_the_window_is_exactly_advancing_them_all(
    batches: list[list[int]], cap: int | None
) -> None:
    """A store loads only `gap_window`'s gaps, applies the change, ends as a full load would."""
    full = SequenceState(0, 0, ())
    stored: set[Gap] = set()
    for batch in batches:
        seqs = [(s, s * 1000) for s in batch]
        window = gap_window(batch, full)
        low, high = window.low, window.high
        loaded = {
            g
            for g in stored
            if low is not None and high is not None and g.last >= low and g.first <= high
        }
        if window.last and stored:
            loaded.add(max(stored))
        partial = full._replace(gaps=tuple(sorted(loaded)))
        change = advance(partial, seqs, cap)
        stored = (stored - set(change.closed)) | set(change.opened)
        full = advance(full, seqs, cap).state
        assert stored == set(full.gaps)
        assert change.state._replace(gaps=()) == full._replace(gaps=())


def test_past_the_cap_a_new_gap_merges_into_the_last_and_an_inner_arrival_splits_nothing() -> None:
    state = advance(SequenceState(0, 0, ()), [(1, 1), (3, 3), (5, 5)], max_open_gaps=2).state
    assert state.gaps == (Gap(2, 2, 1, 3), Gap(4, 4, 3, 5)) and not state.suspect
    state = advance(state, [(7, 7), (9, 9)], max_open_gaps=2).state
    # 6 and 8 merged into 4's gap: 5 and 7, which did arrive, are inside it now.
    assert state.gaps == (Gap(2, 2, 1, 3), Gap(4, 8, 3, 9)) and state.suspect
    assert advance(state, [(6, 6)], max_open_gaps=2).state.gaps == state.gaps
    state = advance(state, [(2, 2), (4, 4)], max_open_gaps=2).state
    assert state.gaps == (Gap(5, 8, 4, 9),) and state.gap_count == 1 and state.suspect
    state = advance(state, [(5, 5), (6, 6), (7, 7), (8, 8)], max_open_gaps=2).state
    assert state.gaps == () and not state.suspect  # nothing left to over-count


def test_max_open_gaps_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="max_open_gaps"):
        Policy(max_open_gaps=0)


def test_a_late_record_splits_a_gap_and_neighbour_times_follow() -> None:
    state = advance(SequenceState(0, 0, ()), [(1, 100), (5, 500)]).state
    assert state.gaps == (Gap(2, 4, 100, 500),)
    state = advance(state, [(3, 300)]).state
    assert state.gaps == (Gap(2, 2, 100, 300), Gap(4, 4, 300, 500))


def test_a_gap_is_lost_once_both_neighbours_are_older_than_4_hours() -> None:
    gap = Gap(2, 4, NOW - 5 * HOUR_MS, NOW - 4 * HOUR_MS)
    assert not is_lost(gap, NOW)
    assert is_lost(gap, NOW + 1)
