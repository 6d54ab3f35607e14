"""PostgreSQL: the catalog and verification transactions.

A catalog update holds an exclusive transaction-level advisory lock; a
screen's decisions hold it shared, together with a per-screen lock taken
with `pg_try_advisory_xact_lock`: several verifiers share the work by screen
(one that finds a screen taken moves on), and no decision interleaves with a
catalog change. The catalog version read with a screen's state is checked
again under the lock, and decisions made against an older catalog are dropped.
Decisions are guarded by `verification = 'pending'`, so a play is decided once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from psycopg import AsyncConnection, AsyncCursor

from playproof.catalog import Catalog, Change
from playproof.stores.verdicts import (
    ENTRIES_SQL,
    LINE_ROLLUP_COLUMNS,
    PLAY_COLUMNS,
    ROLLUP_COLUMNS,
    VERSION_SQL,
    CatalogState,
    Facts,
    ScreenLoad,
    catalog_of,
    change_rows,
    decided_after,
    decided_log,
    decision_rows,
    entry_rows,
    line_deltas,
    log_rows,
    rollup_deltas,
    screen_state,
    verdict_sql,
    window,
)
from playproof.verification import Affected, Decision, Play, affected

_SQL: Final = verdict_sql("%s")
_CATALOG_LOCK: Final = "hashtext('playproof:catalog:' || current_schema())"
_LOCK_CATALOG: Final = f"SELECT pg_advisory_xact_lock({_CATALOG_LOCK})"
_SHARE_CATALOG: Final = f"SELECT pg_advisory_xact_lock_shared({_CATALOG_LOCK})"
# Every screen of the decisions, each locked if free; false if any is held by another
# verifier (the transaction then writes nothing, and its ends release the rest).
_TRY_SCREENS: Final = (
    "SELECT bool_and(pg_try_advisory_xact_lock(hashtext('playproof:verify:' || "
    "current_schema() || ':' || screen))) FROM unnest(%s::text[]) AS screen"
)
_SHOTS: Final = (
    "SELECT s.sha256, f.phash, COALESCE(f.blank, false), f.sha256 IS NULL FROM screenshots s "
    "LEFT JOIN screenshot_facts f ON f.sha256 = s.sha256 WHERE s.sha256 = ANY(%s)"
)
_ROLLUP: Final = (
    f"INSERT INTO rollup_verification AS r ({', '.join(ROLLUP_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(ROLLUP_COLUMNS))}) "
    "ON CONFLICT (bucket, campaign_id, ad_group_id, supplier_id, store_id, device_id, status, "
    "reason) DO UPDATE SET plays = r.plays + excluded.plays"
)
_LINE_ROLLUP: Final = (
    f"INSERT INTO rollup_verification_line AS r ({', '.join(LINE_ROLLUP_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(LINE_ROLLUP_COLUMNS))}) "
    "ON CONFLICT (bucket, campaign_id, ad_group_id, supplier_id, status, reason) "
    "DO UPDATE SET plays = r.plays + excluded.plays"
)
_HIT: Final = (
    "SELECT device_id, MIN(received_at) FROM impressions "
    "WHERE verification IN ('verified', 'failed') AND (campaign_id = ANY(%s) "
    "OR device_id = ANY(%s) OR device_id IN (SELECT device_id FROM devices "
    "WHERE store_id = ANY(%s))) GROUP BY device_id"
)


async def _rows(conn: AsyncConnection, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    return await (await conn.execute(sql.encode(), params)).fetchall()


async def _version(conn: AsyncConnection) -> int:
    return int((await _rows(conn, VERSION_SQL))[0][0])


async def load_catalog(conn: AsyncConnection) -> CatalogState:
    """The catalog and its version, in one transaction."""
    async with conn.transaction():
        rows = await _rows(conn, ENTRIES_SQL)
        return catalog_of(rows, await _version(conn))


async def update_catalog(
    conn: AsyncConnection,
    update: Callable[[Catalog], tuple[Catalog, list[Change]]],
    now: int,
) -> list[Change]:
    """Under the catalog lock: merge, keep the changes, send affected plays back."""
    async with conn.transaction():
        await conn.execute(_LOCK_CATALOG.encode())
        rows = await _rows(conn, ENTRIES_SQL)
        before = catalog_of(rows, 0).catalog
        after, changes = update(before)
        if not changes:
            return []
        async with conn.cursor() as cur:
            await cur.executemany(_SQL.upsert_entry.encode(), entry_rows(changes, now))
            await cur.executemany(_SQL.insert_change.encode(), change_rows(changes, now))
        version = await _version(conn)
        await _requeue(conn, affected(changes, before, after), now, f"catalog change {version}")
    return changes


async def _requeue(conn: AsyncConnection, hit: Affected, now: int, cause: str) -> None:
    if not hit:
        return
    lists = [sorted(s) for s in (hit.campaigns, hit.devices, hit.stores)]
    for device_id, since in await _rows(conn, _HIT, lists):
        rows = await _rows(conn, _SQL.undo, (device_id, since))
        back = (((device_id, r[0], r[1]), "pending", "") for r in rows)
        async with conn.cursor() as cur:
            await _add_rollups(cur, rollup_deltas([r[2:] for r in rows], -1))
            await cur.executemany(_SQL.log.encode(), log_rows(back, now, cause))
        await conn.execute(_SQL.requeue.encode(), (device_id, since))


async def _add_rollups(cur: AsyncCursor[Any], deltas: list[tuple[Any, ...]]) -> None:
    await cur.executemany(_ROLLUP.encode(), deltas)
    await cur.executemany(_LINE_ROLLUP.encode(), line_deltas(deltas))


async def load_screen(
    conn: AsyncConnection, device_id: str, watermark: int, limit: int
) -> ScreenLoad:
    """A screen's pending plays up to `watermark`, in stored order, and what is around them."""
    async with conn.transaction():
        found = await _rows(conn, "SELECT store_id FROM devices WHERE device_id = %s", (device_id,))
        pending = await _rows(conn, _SQL.pending, (device_id, watermark, limit))
        decided: list[Any] = []
        shots: list[Any] = []
        if pending:
            low, high = window(pending)
            decided = await _rows(conn, _SQL.around, (device_id, low, high))
            named = sorted({p[PLAY_COLUMNS.index("screenshot_sha256")] for p in pending} - {None})
            shots = await _rows(conn, _SHOTS, (named,)) if named else []
    return screen_state(device_id, found[0][0] if found else None, pending, decided, shots)


async def save_decisions(
    conn: AsyncConnection,
    decisions: Sequence[tuple[Play, Decision]],
    now: int,
    catalog_version: int,
) -> list[str] | None:
    """Write decisions still pending (of one screen or several): the statuses written, in
    order; None when the catalog changed or another verifier holds one of their screens
    (nothing written either way)."""
    if not decisions:
        return []
    async with conn.transaction():
        await conn.execute(_SHARE_CATALOG.encode())
        screens = sorted({play.device_id for play, _ in decisions})
        taken = await _rows(conn, _TRY_SCREENS, (screens,))
        if not taken[0][0] or await _version(conn) != catalog_version:
            return None
        done = []
        for (play, decision), params in zip(decisions, decision_rows(decisions, now), strict=True):
            cur = await conn.execute(_SQL.decide.encode(), params)
            if cur.rowcount == 1:
                done.append((play, decision))
        async with conn.cursor() as cur:
            await cur.executemany(_SQL.log.encode(), decided_log(done, now))
            await _add_rollups(cur, rollup_deltas([decided_after(p, d) for p, d in done], +1))
    return [decision.status for _, decision in done]


async def save_facts(conn: AsyncConnection, facts: Sequence[Facts]) -> None:
    """Keep what screenshots show."""
    async with conn.cursor() as cur:
        await cur.executemany(
            b"INSERT INTO screenshot_facts (sha256, phash, blank, error) "
            b"VALUES (%s, %s, %s, %s) ON CONFLICT (sha256) DO NOTHING",
            facts,
        )


async def add_reference(
    conn: AsyncConnection, content_id: str, sha256: str, phash: str, now: int
) -> bool:
    """Keep a content's reference image hash; False if it was known."""
    cur = await conn.execute(
        b"INSERT INTO content_references (content_id, sha256, phash, added_at) "
        b"VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (content_id, sha256, phash, now),
    )
    return cur.rowcount > 0
