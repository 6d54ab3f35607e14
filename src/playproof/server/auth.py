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
from typing import Final

from playproof.errors import Forbidden, Unauthenticated
from playproof.stores.base import DeviceInfo, Store

TOKEN_PREFIX: Final = "ppd_"  # noqa: S105 (a prefix, not a secret)
CACHE_SECONDS: Final = 2.0


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


class Authenticator:
    """Turns an Authorization header into a registered, unrevoked device."""

    def __init__(self, store: Store, cache_seconds: float = CACHE_SECONDS) -> None:
        self._store = store
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, DeviceInfo | None]] = {}

    async def device(self, authorization: str | None) -> DeviceInfo:
        """The caller's device; Unauthenticated (unknown) or Forbidden (revoked) otherwise."""
        wanted = hash_token(bearer_token(authorization))
        device = await self._lookup(wanted)
        if device is None:
            raise Unauthenticated("unknown token")
        if device.revoked_at is not None:
            raise Forbidden(f"the token of device {device.device_id!r} is revoked")
        return device

    async def _lookup(self, wanted: str) -> DeviceInfo | None:
        now = time.monotonic()
        hit = self._cache.get(wanted)
        if hit is not None and hit[0] > now:
            return hit[1]
        found = await self._store.device_for_token(wanted)
        device = None
        if found is not None and hmac.compare_digest(found.token_hash, wanted):
            device = found.device
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[wanted] = (now + self._cache_seconds, device)
        return device
