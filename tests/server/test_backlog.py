"""The backlog: bounded in records and bytes, and shared so that a flood leaves a screen room."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from playproof.errors import Overloaded
from playproof.server.backlog import Backlog

MAX_RECORDS, MAX_BYTES = 1000, 64 * 1024


def fill(backlog: Backlog, stack: contextlib.ExitStack, device: str, nbytes: int) -> int:
    """Hold batches of `nbytes` for `device` until refused; how many were taken."""
    taken = 0
    while True:
        try:
            stack.enter_context(backlog.hold(device, 1, nbytes))
        except Overloaded:
            return taken
        taken += 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 30), st.integers(0, 200), st.integers(0, 20_000), st.booleans()),
        max_size=120,
    )
)
def test_what_is_held_never_exceeds_the_bounds_and_is_all_given_back(
    ops: list[tuple[int, int, int, bool]],
) -> None:
    backlog = Backlog(MAX_RECORDS, MAX_BYTES)
    with contextlib.ExitStack() as outer:
        held: list[contextlib.ExitStack] = []
        for device, records, nbytes, release in ops:
            if release and held:
                held.pop(0).close()
                continue
            batch = outer.enter_context(contextlib.ExitStack())
            with contextlib.suppress(Overloaded):
                batch.enter_context(backlog.hold(f"d{device}", records, nbytes))
            held.append(batch)
            assert backlog.records <= MAX_RECORDS and backlog.bytes <= MAX_BYTES
    assert (backlog.records, backlog.bytes) == (0, 0)


def test_devices_within_their_shares_leave_room_for_a_newcomer() -> None:
    """50 devices hold a 1 KiB batch each (past half full) and may take no more, being
    at their 1/51 share; a screen arriving with a 1 KiB batch still finds room."""
    backlog = Backlog(MAX_RECORDS, MAX_BYTES)
    with contextlib.ExitStack() as stack:
        for device in range(50):
            stack.enter_context(backlog.hold(f"flood-{device}", 1, 1024))
        assert backlog.bytes * 2 > MAX_BYTES
        for device in range(50):
            assert fill(backlog, stack, f"flood-{device}", 1024) == 0
        with backlog.hold("screen", 1, 1024):
            assert backlog.bytes == 51 * 1024


def test_past_half_full_a_device_may_not_hold_more_than_its_share() -> None:
    backlog = Backlog(MAX_RECORDS, MAX_BYTES)
    with contextlib.ExitStack() as stack:
        alone = fill(backlog, stack, "greedy", 1024)
        assert alone == MAX_BYTES // 2 // 1024, "alone, half of the backlog (its 1/2 share)"
        assert fill(backlog, stack, "other", 1024) > 0, "the other half is left for others"


def test_a_refusal_says_how_long_to_wait() -> None:
    backlog = Backlog(10, MAX_BYTES, retry_after_s=2.5)
    with pytest.raises(Overloaded) as refused:
        backlog.check("d", 11, 0)
    assert refused.value.retry_after_s == 2.5
    assert "at most 10" in str(refused.value)
