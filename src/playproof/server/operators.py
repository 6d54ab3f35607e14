"""Operators: people and systems that read reports, each with a bearer token of their own.

Operator tokens look unlike device tokens (`ppo_` against `ppd_`) and live in
their own table, stored as SHA-256 hashes like device tokens and looked up the
same way: cached for a couple of seconds, compared in constant time. A device
token never opens an operator route: it is answered 403, an unknown token 401.
"""

from __future__ import annotations

import hmac
from typing import Final

from playproof.errors import Forbidden, Unauthenticated
from playproof.server.auth import (
    CACHE_SECONDS,
    BeforeLookup,
    TokenCache,
    bearer_token,
    hash_token,
    new_token,
)
from playproof.server.ingest import wall_clock_ms
from playproof.server.params import id_value
from playproof.stores.base import OperatorInfo, Store

OPERATOR_PREFIX: Final = "ppo_"
_DEVICE: Final = "device"


async def add_operator(store: Store, name: str) -> str:
    """Register an operator and return its new bearer token (shown once, stored as a hash)."""
    token = new_token(OPERATOR_PREFIX)
    operator = OperatorInfo(id_value("operator name", name), wall_clock_ms(), None)
    await store.add_operator(operator, hash_token(token))
    return token


async def revoke_operator(store: Store, name: str) -> None:
    """Revoke an operator's token: its requests get 403 within the cache time."""
    await store.revoke_operator(name, wall_clock_ms())


class OperatorAuth:
    """Turns an Authorization header into a registered, unrevoked operator."""

    def __init__(self, store: Store, cache_seconds: float = CACHE_SECONDS) -> None:
        self._store = store
        self._cache = TokenCache(self._find, cache_seconds, max_entries=10_000)

    async def operator(
        self, authorization: str | None, before_lookup: BeforeLookup | None = None
    ) -> OperatorInfo:
        """The caller; Unauthenticated (missing, unknown) or Forbidden (device token, revoked)."""
        found = await self._cache.get(hash_token(bearer_token(authorization)), before_lookup)
        if found == _DEVICE:
            raise Forbidden(
                "expected an operator token (playproof operators add NAME), got a device token"
            )
        if not isinstance(found, OperatorInfo):
            raise Unauthenticated("unknown operator token")
        if found.revoked_at is not None:
            raise Forbidden(f"the token of operator {found.name!r} is revoked")
        return found

    async def _find(self, wanted: str) -> OperatorInfo | str | None:
        credential = await self._store.operator_for_token(wanted)
        if credential is not None and hmac.compare_digest(credential.token_hash, wanted):
            return credential.operator
        if await self._store.device_for_token(wanted) is not None:
            return _DEVICE
        return None
