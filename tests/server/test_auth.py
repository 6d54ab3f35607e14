"""The token cache: one store read per token per cache time, misses included."""

from __future__ import annotations

import asyncio
import time

import pytest

from playproof.errors import RateLimited
from playproof.server.auth import TokenCache


class Lookups:
    """A lookup that records each token it is asked for (what a store read would be)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, token_hash: str) -> str | None:
        self.asked.append(token_hash)
        return "known" if token_hash == "good" else None


async def test_an_unknown_token_costs_one_lookup_per_cache_time() -> None:
    store = Lookups()
    cache = TokenCache(store, seconds=0.2)
    assert [await cache.get("nobody") for _ in range(100)] == [None] * 100
    assert store.asked == ["nobody"], "the miss is cached"
    await asyncio.sleep(0.25)
    assert await cache.get("nobody") is None
    assert store.asked == ["nobody", "nobody"], "and looked up again after the cache time"


async def test_the_check_before_a_lookup_runs_only_when_the_store_is_asked() -> None:
    store = Lookups()
    cache = TokenCache(store, seconds=60)
    checks: list[str] = []
    assert await cache.get("good", lambda: checks.append("good")) == "known"
    assert await cache.get("good", lambda: checks.append("good")) == "known"
    assert checks == ["good"], "a cache hit needs no check"

    def refuse() -> None:
        raise RateLimited("too many failures", 5.0)

    with pytest.raises(RateLimited):
        await cache.get("other", refuse)
    assert store.asked == ["good"], "a refused lookup never reaches the store"


async def test_a_confirmed_version_keeps_entries_past_the_cache_time() -> None:
    store = Lookups()
    cache = TokenCache(store, seconds=0.2)
    cache.confirm(7, time.monotonic())
    assert await cache.get("good") == "known"
    await asyncio.sleep(0.15)
    cache.confirm(7, time.monotonic())
    await asyncio.sleep(0.15)
    assert await cache.get("good") == "known"
    assert store.asked == ["good"], "trusted while the version stays put"


async def test_a_moved_version_forgets_every_entry() -> None:
    store = Lookups()
    cache = TokenCache(store, seconds=60)
    cache.confirm(7, time.monotonic())
    assert await cache.get("good") == "known"
    assert await cache.get("nobody") is None
    cache.confirm(8, time.monotonic())
    assert await cache.get("good") == "known"
    assert await cache.get("nobody") is None
    assert store.asked == ["good", "nobody", "good", "nobody"]


async def test_without_confirmation_entries_expire_after_the_cache_time() -> None:
    store = Lookups()
    cache = TokenCache(store, seconds=0.2)
    cache.confirm(7, time.monotonic() - 1.0)  # last confirmed long ago: the watch stopped
    assert await cache.get("good") == "known"
    await asyncio.sleep(0.25)
    assert await cache.get("good") == "known"
    assert store.asked == ["good", "good"]


async def test_an_answer_read_across_a_change_of_version_is_used_once_not_kept() -> None:
    release = asyncio.Event()
    asked: list[str] = []

    async def slow(token_hash: str) -> str:
        asked.append(token_hash)
        await release.wait()
        return "read before the change"

    cache = TokenCache(slow, seconds=60)
    cache.confirm(1, time.monotonic())
    pending = asyncio.create_task(cache.get("good"))
    await asyncio.sleep(0)
    cache.confirm(2, time.monotonic())  # the device changed while it was being read
    release.set()
    assert await pending == "read before the change"
    release.clear()
    looked_up = asyncio.create_task(cache.get("good"))
    await asyncio.sleep(0)
    assert asked == ["good", "good"], "looked up again, not served from the cache"
    release.set()
    await looked_up
