"""Reads of the catalog and verification, shared by both stores (the store runs the SQL)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from playproof.stores.base import Reader, Store
from playproof.stores.queries import placeholder


async def catalog_version(store: Store) -> int:
    """The id of the catalog's last change (0: never changed)."""
    rows = await store.read_rows("SELECT COALESCE(MAX(id), 0) FROM catalog_changes")
    return int(rows[0][0])


async def booking_version(store: Store) -> tuple[int, int]:
    """What the verifier's view of the bookings depends on: the catalog's last change and
    how many reference images there are (added without changing the catalog)."""
    rows = await store.read_rows(
        "SELECT (SELECT COALESCE(MAX(id), 0) FROM catalog_changes), "
        "(SELECT COUNT(*) FROM content_references)"
    )
    return int(rows[0][0]), int(rows[0][1])


# The screens with plays pending, one index seek each, in device order: a skip scan of
# the partial index `impressions_pending` (device_id first). Asked with DISTINCT or MIN
# directly, both stores walked every pending play: 11 ms a turn at 160,000 pending
# against 0.03 (issue 17: at 40,000 records/s the verifier's reads were a quarter of
# the service's CPU).
_PENDING_SCREENS = (
    "WITH RECURSIVE screens (device_id) AS ("
    "SELECT min(device_id) FROM impressions WHERE verification = 'pending' "
    "UNION ALL SELECT (SELECT min(i.device_id) FROM impressions AS i "
    "WHERE i.verification = 'pending' AND i.device_id > s.device_id) "
    "FROM screens AS s WHERE s.device_id IS NOT NULL) "
)


async def pending_screens(store: Store, watermark: int, limit: int) -> list[str]:
    """Screens with valid plays pending that were received up to `watermark`, by id."""
    ph = placeholder(store)
    rows = await store.read_rows(
        f"{_PENDING_SCREENS}SELECT s.device_id FROM screens AS s "
        "WHERE s.device_id IS NOT NULL AND EXISTS (SELECT 1 FROM impressions AS i "
        "WHERE i.verification = 'pending' AND i.device_id = s.device_id "
        f"AND i.received_at <= {ph}) ORDER BY s.device_id LIMIT {int(limit)}",
        (watermark,),
    )
    return [str(r[0]) for r in rows]


async def oldest_pending(store: Reader) -> int | None:
    """The received_at of the oldest play waiting for its decision (the verifier's lag)."""
    rows = await store.read_rows(
        f"{_PENDING_SCREENS}SELECT min((SELECT min(i.received_at) FROM impressions AS i "
        "WHERE i.verification = 'pending' AND i.device_id = s.device_id)) "
        "FROM screens AS s WHERE s.device_id IS NOT NULL"
    )
    return None if rows[0][0] is None else int(rows[0][0])


async def references(store: Store) -> dict[str, list[str]]:
    """Every content's reference image hashes."""
    found: dict[str, list[str]] = {}
    rows = await store.read_rows(
        "SELECT content_id, phash FROM content_references ORDER BY content_id, sha256"
    )
    for content_id, phash in rows:
        found.setdefault(str(content_id), []).append(str(phash))
    return found


async def catalog_changes(store: Store, limit: int = 1000) -> list[tuple[Any, ...]]:
    """The latest catalog changes, newest first: (id, at, kind, entry_id, action, before, after)."""
    return await store.read_rows(
        "SELECT id, at, kind, entry_id, action, before, after FROM catalog_changes "
        f"ORDER BY id DESC LIMIT {int(limit)}"
    )


async def verification_log(store: Store, key: Sequence[Any]) -> list[tuple[Any, ...]]:
    """One play's decisions, oldest first: (at, status, reasons, cause)."""
    ph = placeholder(store)
    return await store.read_rows(
        "SELECT at, status, reasons, cause FROM verification_log "
        f"WHERE device_id = {ph} AND journal_id = {ph} AND seq = {ph} ORDER BY id",
        tuple(key),
    )


async def pending_count(store: Store) -> int:
    """Valid plays waiting for their decision."""
    rows = await store.read_rows("SELECT COUNT(*) FROM impressions WHERE verification = 'pending'")
    return int(rows[0][0])


async def content_references(store: Store, content_id: str) -> list[tuple[str, str, int]]:
    """A content's reference images: (sha256, phash, added_at), oldest first."""
    ph = placeholder(store)
    rows = await store.read_rows(
        "SELECT sha256, phash, added_at FROM content_references "
        f"WHERE content_id = {ph} ORDER BY added_at, sha256",
        (content_id,),
    )
    return [(str(s), str(p), int(a)) for s, p, a in rows]
