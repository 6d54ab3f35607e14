"""The token cache: one store read per token per cache time, misses included."""

from __future__ import annotations

import asyncio

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
