"""Device tokens: minted at random, stored as hashes, checked in constant time.

A token carries 192 random bits, so one round of SHA-256 is a safe way to keep
it: there is nothing to brute-force. Lookups are cached so that a busy device
costs no database read per request. A device's entry is trusted for as long as
the store's device version (a number its triggers move on any change to a device
or its keys, whoever makes it: this process, the CLI, another node) has not
moved; `Authenticator.watch` reads that one number every second. A revocation
then takes effect within about a second, and 10,000 connected screens cost one
read a second instead of one per screen every cache period (issue 17). When the
version cannot be read, entries fall back to expiring after a couple of seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Final, Generic, TypeVar

from playproof.errors import Forbidden, StoreError, Unauthenticated
from playproof.stores.base import DeviceInfo, Store

log = logging.getLogger(__name__)

TOKEN_PREFIX: Final = "ppd_"  # noqa: S105 (a prefix, not a secret)
CACHE_SECONDS: Final = 2.0
# How often the device version is read (the longest a change made elsewhere goes unseen).
WATCH_SECONDS: Final = 1.0

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
    """What a token hash stands for, looked up once and kept in bounded memory.

    An entry is trusted for `seconds` after it was read, and for as long after that
    as `confirm` keeps saying nothing changed (the store's version stays the same,
    confirmed within the last `seconds`). A new version forgets every entry.
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
        # token hash -> (trusted until, the version it was read under, answer)
        self._entries: dict[str, tuple[float, int | None, T]] = {}
        # The store's version as last confirmed (it only ever grows); None before that.
        self._version: int | None = None
        self._confirmed_until = float("-inf")

    async def get(self, token_hash: str, before_lookup: BeforeLookup | None = None) -> T:
        """The cached answer for a token hash, looked up again once it is no longer trusted.

        `before_lookup` runs only when the store is to be asked, and may refuse by raising.
        """
        hit = self._entries.get(token_hash)
        if hit is not None and hit[1] == self._version:
            now = time.monotonic()
            if hit[0] > now or self._confirmed_until > now:
                return hit[2]
        if before_lookup is not None:
            before_lookup()
        version = self._version
        found = await self._lookup(token_hash)
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        # Read across a change of version, the answer may predate it: used once, not kept.
        if version == self._version:
            self._entries[token_hash] = (time.monotonic() + self._seconds, version, found)
        return found

    def confirm(self, version: int, read_at: float) -> None:
        """The store's version as read at `read_at` (monotonic, taken before the read):
        the entries stay trusted if it has not moved, and are all forgotten if it has."""
        if version != self._version:
            self._version = version
            self._entries.clear()
        self._confirmed_until = read_at + self._seconds

    def forget(self, stale: Callable[[T], bool]) -> None:
        """Drop the entries whose answer is `stale`: they are looked up again when next asked."""
        for token_hash in [h for h, (_, _, found) in self._entries.items() if stale(found)]:
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
        process at the next read of the device version."""
        self._cache.forget(lambda found: found is not None and found.device_id == device_id)

    async def watch(self, every_s: float = WATCH_SECONDS) -> None:
        """Read the store's device version every `every_s`, for as long as the service runs."""
        failing = False
        while True:
            read_at = time.monotonic()
            try:
                version = await self._store.device_version()
            except StoreError as exc:
                # The entries expire on their own meanwhile: nothing is trusted unconfirmed.
                if not failing:
                    log.warning("cannot read the device version (%s); tokens expire instead", exc)
                failing = True
            else:
                self._cache.confirm(version, read_at)
                failing = False
            await asyncio.sleep(every_s)

    async def _find(self, wanted: str) -> DeviceInfo | None:
        found = await self._store.device_for_token(wanted)
        if found is not None and hmac.compare_digest(found.token_hash, wanted):
            return found.device
        return None
