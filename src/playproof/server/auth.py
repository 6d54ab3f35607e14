"""Device tokens: minted at random, stored as hashes, checked in constant time.

A token carries 192 random bits, so one round of SHA-256 is a safe way to keep
it: there is nothing to brute-force. Lookups are cached for a couple of seconds
so that a busy device costs no database read per request; a revocation made
from the CLI in another process takes effect within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Final, Generic, TypeVar

from playproof.errors import Forbidden, Unauthenticated
from playproof.stores.base import DeviceInfo, Store

TOKEN_PREFIX: Final = "ppd_"  # noqa: S105 (a prefix, not a secret)
CACHE_SECONDS: Final = 2.0

T = TypeVar("T")
# Called before a token is looked up in the store; raises to refuse (auth failures, guard.py).
BeforeLookup = Callable[[], None]


def new_token(prefix: str = TOKEN_PREFIX) -> str:
    """A fresh bearer token with 192 random bits."""
    return prefix + secrets.token_urlsafe(24)


def hash_token(token: str) -> str:
    """The form in which a token is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header, or Unauthenticated."""
    if not header:
        raise Unauthenticated("expected an 'Authorization: Bearer <token>' header, got none")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("expected 'Authorization: Bearer <token>', got another scheme")
    return token


class TokenCache(Generic[T]):
    """What a token hash stands for, looked up once per `seconds` and kept in bounded memory.

    Misses are cached too, so that a flood of one unknown token costs one
    database read per period; past `max_entries` the cache starts afresh.
    """

    def __init__(
        self,
        lookup: Callable[[str], Awaitable[T]],
        seconds: float = CACHE_SECONDS,
        max_entries: int = 100_000,
    ) -> None:
        self._lookup = lookup
        self._seconds = seconds
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, T]] = {}

    async def get(self, token_hash: str, before_lookup: BeforeLookup | None = None) -> T:
        """The cached answer for a token hash, looked up again once it is older than `seconds`.

        `before_lookup` runs only when the store is to be asked, and may refuse by raising.
        """
        hit = self._entries.get(token_hash)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        if before_lookup is not None:
            before_lookup()
        found = await self._lookup(token_hash)
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[token_hash] = (time.monotonic() + self._seconds, found)
        return found

    def forget(self, stale: Callable[[T], bool]) -> None:
        """Drop the entries whose answer is `stale`: they are looked up again when next asked."""
        for token_hash in [h for h, (_, found) in self._entries.items() if stale(found)]:
            del self._entries[token_hash]


class Authenticator:
    """Turns an Authorization header into a registered, unrevoked device."""

    def __init__(self, store: Store, cache_seconds: float = CACHE_SECONDS) -> None:
        self._store = store
        self._cache = TokenCache(self._find, cache_seconds)

    async def device(
        self, authorization: str | None, before_lookup: BeforeLookup | None = None
    ) -> DeviceInfo:
        """The caller's device; Unauthenticated (unknown) or Forbidden (revoked) otherwise."""
        return await self.device_by_hash(hash_token(bearer_token(authorization)), before_lookup)

    async def device_by_hash(
        self, wanted: str, before_lookup: BeforeLookup | None = None
    ) -> DeviceInfo:
        """The device holding a token hash, checked again at most every cache period.

        An open stream calls this on every frame, so that a revocation or a
        rotation reaches connections opened before it within the cache time.
        """
        device = await self._cache.get(wanted, before_lookup)
        if device is None:
            raise Unauthenticated("unknown token")
        if device.revoked_at is not None:
            raise Forbidden(f"the token of device {device.device_id!r} is revoked")
        return device

    def forget_device(self, device_id: str) -> None:
        """Look the device up again on its next request: its keys changed in this process
        (server/keys.py). A change made elsewhere (the CLI, another node) reaches this
        process within the cache time."""
        self._cache.forget(lambda found: found is not None and found.device_id == device_id)

    async def _find(self, wanted: str) -> DeviceInfo | None:
        found = await self._store.device_for_token(wanted)
        if found is not None and hmac.compare_digest(found.token_hash, wanted):
            return found.device
        return None
