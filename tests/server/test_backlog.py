"""The backlog: bounded in records and bytes, and shared so that a flood leaves a screen room."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from playproof.errors import Overloaded
from playproof.server.backlog import RESERVE, Backlog

MAX_RECORDS, MAX_BYTES = 1000, 64 * 1024
MIB = 1024 * 1024


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


def test_a_flood_of_1_mib_frames_leaves_a_screen_room() -> None:
    """The default backlog; 50 devices, 4 connections each, send a 1 MiB frame on each
    connection (test_backpressure's flood): a screen still gets four 1 KiB frames taken.
    Before the reserve, the first devices' frames, taken while the backlog was under half
    full, and the others' shares past it left the backlog 1 KiB short of full: the
    screen's second frame was refused for as long as the flood lasted."""
    backlog = Backlog(100_000, 64 * MIB)
    with contextlib.ExitStack() as stack:
        for device in range(50):
            for _ in range(4):
                with contextlib.suppress(Overloaded):
                    stack.enter_context(backlog.hold(f"flood-{device}", 1, MIB - 16))
        assert backlog.bytes > 64 * MIB * (1 - RESERVE) - MIB, "the flood filled the rest"
        for _ in range(4):
            stack.enter_context(backlog.hold("screen", 1, 1024))


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(
                st.integers(0, 30),
                st.sampled_from([0, 1, 50, 125, 200]),
                st.sampled_from([4097, 8192, 16_384]),
            ),
            st.none(),
        ),
        max_size=150,
    )
)
def test_big_batches_never_leave_a_small_one_without_room(
    ops: list[tuple[int, int, int] | None],
) -> None:
    """Whatever big batches (over half the reserve's bytes: never "holding little") come
    and go (None: the oldest is answered), a device holding nothing is taken with a batch
    of its share of the reserve: 1/(n+2) of it, n devices holding something before it."""
    backlog = Backlog(MAX_RECORDS, MAX_BYTES)
    assert MAX_BYTES * RESERVE / 2 < 4097
    held: list[tuple[str, int, int]] = []
    for op in ops:
        if op is None:
            if held:
                backlog.release(*held.pop(0))
        else:
            batch = (f"d{op[0]}", op[1], op[2])
            with contextlib.suppress(Overloaded):
                backlog.take(*batch)
                held.append(batch)
        share = len({device for device, _, _ in held}) + 2
        backlog.check(
            "screen", int(MAX_RECORDS * RESERVE // share), int(MAX_BYTES * RESERVE // share)
        )


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
