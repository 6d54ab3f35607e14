"""The service keeps long-lived objects out of full collections (issue 17), yet still
collects reference cycles: at every thaw, on time or on growth.

`keep_frozen` works on the interpreter's one collector, so each test thaws and collects
what it froze before it ends. Counts (a cycle collected or not), never timings.
"""

from __future__ import annotations

import asyncio
import gc
import mmap
import weakref
from collections.abc import Iterator

import pytest

from playproof.server.collector import keep_frozen, resident_bytes


class Node:
    """Half of a reference cycle."""

    other: Node | None = None


def cycle() -> weakref.ref[Node]:
    """A two-object cycle, unreachable once this returns; a weak reference to watch it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    # No automatic collections meanwhile: only the ones under test may collect a cycle.
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()
        gc.collect()


async def run_briefly(thaw_every_s: float, thaw_growth: int) -> None:
    task = asyncio.create_task(keep_frozen(0.01, thaw_every_s, thaw_growth))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cycle_frozen_between_thaws_waits_for_the_thaw() -> None:
    watched = cycle()
    await run_briefly(thaw_every_s=3600, thaw_growth=10**9)
    gc.collect()
    assert watched() is not None, "frozen: out of the full collections' reach"
    gc.unfreeze()
    gc.collect()
    assert watched() is None, "thawed, it is collected"


def newly_resident(size: int) -> mmap.mmap:
    """`size` bytes made resident: a fresh anonymous mapping with every page written (an
    ordinary allocation may reuse memory the process already holds, and not grow it)."""
    region = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        region[offset] = 1
    return region


def test_resident_memory_is_read_and_grows_with_what_is_allocated() -> None:
    before = resident_bytes()
    held = newly_resident(32 * 1024 * 1024)
    assert resident_bytes() - before >= 30 * 1024 * 1024
    held.close()


async def test_a_thaw_on_time_collects_cycles() -> None:
    watched = cycle()
    await run_briefly(thaw_every_s=0, thaw_growth=10**9)
    assert watched() is None


async def test_a_thaw_on_growth_collects_cycles() -> None:
    watched = cycle()
    growth = 16 * 1024 * 1024
    task = asyncio.create_task(keep_frozen(every_s=0.01, thaw_every_s=3600, thaw_growth=growth))
    await asyncio.sleep(0.05)
    assert watched() is not None, "no thaw before the memory grows"
    # Resident memory grown by more than `thaw_growth` since the last thaw: the next round
    # thaws.
    grown = newly_resident(4 * growth)
    for _ in range(50):
        await asyncio.sleep(0.01)
        if watched() is None:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert watched() is None
    grown.close()
