"""Catalog and verification as the stores keep them: rows, rollup deltas, shared SQL.

Both stores keep the catalog as one row per entry (its JSON document) with
every change beside it, and a play's decision in its impression row, with a
log row and the verification rollup written in the same transaction. What is
computed from rows (the catalog back from its documents, the rollup deltas of
a set of decisions) is computed here, once, so that the stores cannot differ.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, NamedTuple

import msgspec

from playproof.catalog import KINDS, Campaign, Catalog, Change, Content, DeviceEntry, StoreEntry
from playproof.catalog import Supplier as SupplierEntry
from playproof.rules import HOUR_MS
from playproof.verification import FAILED, Decided, Decision, Play, ScreenState, Shot

# The verification rollup's time buckets: an hour of start_ts.
BUCKET_MS: Final = HOUR_MS
# Decided plays this far either side of a screen's pending ones are read with them:
# more than the longest play (overlap) and the longest local day (the cap).
AROUND_MS: Final = 2 * 24 * HOUR_MS
PENDING: Final = "pending"
DECIDED: Final = ("verified", "failed")

_TYPES: Final[dict[str, type[Any]]] = {
    "supplier": SupplierEntry,
    "store": StoreEntry,
    "device": DeviceEntry,
    "content": Content,
    "campaign": Campaign,
}
_FIELD: Final = {kind: field for kind, field, _ in KINDS}

PLAY_COLUMNS: Final = Play._fields
ROLLUP_COLUMNS: Final = (
    "bucket",
    "campaign_id",
    "ad_group_id",
    "supplier_id",
    "store_id",
    "device_id",
    "status",
    "reason",
    "plays",
)
# The same counts without the screen (store, device): what a statement or a report by
# campaign reads, a few rows an hour whatever the fleet's size.
LINE_ROLLUP_COLUMNS: Final = (
    "bucket",
    "campaign_id",
    "ad_group_id",
    "supplier_id",
    "status",
    "reason",
    "plays",
)
# What a decision's rollup rows need of an impression row, in this order.
DECIDED_COLUMNS: Final = (
    "start_ts",
    "campaign_id",
    "ad_group_id",
    "supplier_id",
    "store_id",
    "device_id",
    "verification",
    "verification_reasons",
)


# What a screenshot shows: (sha256, phash or None if undecodable, blank, error or None).
Facts = tuple[str, str | None, bool, str | None]


ENTRIES_SQL: Final = "SELECT kind, entry_id, doc, retired_at FROM catalog_entries"
VERSION_SQL: Final = "SELECT COALESCE(MAX(id), 0) FROM catalog_changes"


class VerdictSql(NamedTuple):
    """The statements both stores run alike, in one dialect's placeholder."""

    upsert_entry: str
    insert_change: str
    pending: str
    around: str
    decide: str
    log: str
    undo: str
    requeue: str


def verdict_sql(ph: str) -> VerdictSql:
    """The shared statements with `ph` (`?` or `%s`) for their parameters."""

    def values(count: int) -> str:
        return ", ".join([ph] * count)

    decided = "verification IN ('verified', 'failed')"
    return VerdictSql(
        upsert_entry="INSERT INTO catalog_entries (kind, entry_id, doc, updated_at, retired_at) "
        f"VALUES ({values(5)}) ON CONFLICT (kind, entry_id) DO UPDATE SET "
        "doc = excluded.doc, updated_at = excluded.updated_at, retired_at = excluded.retired_at",
        insert_change="INSERT INTO catalog_changes (at, kind, entry_id, action, before, after) "
        f"VALUES ({values(6)})",
        pending=f"SELECT {', '.join(PLAY_COLUMNS)} FROM impressions "
        f"WHERE device_id = {ph} AND verification = 'pending' AND received_at <= {ph} "
        f"ORDER BY received_at, journal_id, seq LIMIT {ph}",
        around="SELECT start_ts, end_ts, campaign_id, verification, verification_reasons "
        f"FROM impressions WHERE device_id = {ph} AND start_ts >= {ph} AND start_ts < {ph} "
        f"AND status = 'valid' AND {decided}",
        decide=f"UPDATE impressions SET verification = {ph}, verification_reasons = {ph}, "
        f"verified_at = {ph} WHERE device_id = {ph} AND journal_id = {ph} AND seq = {ph} "
        f"AND start_ts = {ph} AND verification = 'pending'",
        log="INSERT INTO verification_log (device_id, journal_id, seq, at, status, reasons, "
        f"cause) VALUES ({values(7)})",
        undo=f"SELECT journal_id, seq, {', '.join(DECIDED_COLUMNS)} FROM impressions "
        f"WHERE device_id = {ph} AND received_at >= {ph} AND {decided}",
        requeue="UPDATE impressions SET verification = 'pending', verification_reasons = NULL, "
        f"verified_at = NULL WHERE device_id = {ph} AND received_at >= {ph} AND {decided}",
    )


class CatalogState(NamedTuple):
    """The catalog as stored: its active entries, retired campaigns, and the last change's id."""

    catalog: Catalog
    retired: dict[str, tuple[Campaign, int]]
    version: int


class ScreenLoad(NamedTuple):
    """A screen's state for the verifier, and the uploaded screenshots not yet fingerprinted."""

    state: ScreenState
    unfingerprinted: list[str]


def catalog_of(rows: Iterable[Sequence[Any]], version: int) -> CatalogState:
    """The catalog from its rows (kind, entry_id, doc, retired_at)."""
    lists: dict[str, list[Any]] = {field: [] for field in _FIELD.values()}
    retired: dict[str, tuple[Campaign, int]] = {}
    for kind, _, doc, retired_at in rows:
        entry = msgspec.json.decode(doc, type=_TYPES[kind])
        if retired_at is None:
            lists[_FIELD[kind]].append(entry)
        elif kind == "campaign":
            retired[entry.campaign_id] = (entry, int(retired_at))
    return CatalogState(Catalog(**lists), retired, version)


def entry_rows(changes: Sequence[Change], now: int) -> list[tuple[Any, ...]]:
    """Upserts of catalog_entries for changes: (kind, entry_id, doc, updated_at, retired_at)."""
    rows: list[tuple[Any, ...]] = []
    for change in changes:
        if change.action == "retired":
            rows.append((change.kind, change.id, change.before, now, now))
        else:
            rows.append((change.kind, change.id, change.after, now, None))
    return rows


def change_rows(changes: Sequence[Change], now: int) -> list[tuple[Any, ...]]:
    """Rows of catalog_changes: (at, kind, entry_id, action, before, after)."""
    return [(now, c.kind, c.id, c.action, c.before, c.after) for c in changes]


def reasons_text(reasons: Sequence[str]) -> str:
    """Reasons as stored: comma-separated, in REASONS order."""
    return ",".join(reasons)


def reasons_of(text: str | None) -> tuple[str, ...]:
    """Stored reasons back as a tuple."""
    return tuple(text.split(",")) if text else ()


def screen_state(
    device_id: str,
    registered_store_id: str | None,
    pending: Sequence[Sequence[Any]],
    decided: Sequence[Sequence[Any]],
    shots: Sequence[Sequence[Any]],
) -> ScreenLoad:
    """A screen's state from its rows: pending (PLAY_COLUMNS), decided, shots with facts."""
    plays = [Play(*row) for row in pending]
    around = [Decided(s, e, c, v, reasons_of(r)) for s, e, c, v, r in decided]
    known = {sha: Shot(phash, bool(blank)) for sha, phash, blank, missing in shots if not missing}
    unknown = [sha for sha, _, _, missing in shots if missing]
    return ScreenLoad(ScreenState(device_id, registered_store_id, plays, around, known), unknown)


def window(pending: Sequence[Sequence[Any]]) -> tuple[int, int]:
    """The start_ts range of decided plays a screen's pending plays need around them."""
    starts = [row[PLAY_COLUMNS.index("start_ts")] for row in pending]
    ends = [row[PLAY_COLUMNS.index("end_ts")] for row in pending]
    return min(starts) - AROUND_MS, max(ends) + AROUND_MS


def decision_rows(decisions: Sequence[tuple[Play, Decision]], now: int) -> list[tuple[Any, ...]]:
    """UPDATE parameters per decision: status, reasons, at, then the key and start_ts."""
    return [
        (d.status, reasons_text(d.reasons), now, p.device_id, p.journal_id, p.seq, p.start_ts)
        for p, d in decisions
    ]


Key = tuple[str, str, int]


def log_rows(
    entries: Iterable[tuple[Key, str, str]], now: int, cause: str
) -> list[tuple[Any, ...]]:
    """verification_log rows (device_id, journal_id, seq, at, status, reasons, cause)."""
    return [(*key, now, status, reasons, cause) for key, status, reasons in entries]


def decided_log(done: Iterable[tuple[Play, Decision]], now: int) -> list[tuple[Any, ...]]:
    """The log rows of decisions the verifier made."""
    entries = (
        ((p.device_id, p.journal_id, p.seq), d.status, reasons_text(d.reasons)) for p, d in done
    )
    return log_rows(entries, now, "verifier")


def rollup_deltas(rows: Iterable[Sequence[Any]], sign: int) -> list[tuple[Any, ...]]:
    """Rollup rows to add for decided impressions (DECIDED_COLUMNS): +1 decides, -1 undoes.

    Each play counts once under its status with reason '', and a failed play once
    more under each of its reasons, so that failures can be counted by reason.
    """
    acc: dict[tuple[Any, ...], int] = {}
    for start, campaign, group, supplier, store, device, status, reasons in rows:
        dims = (start - start % BUCKET_MS, campaign, group, supplier, store, device, status)
        acc[(*dims, "")] = acc.get((*dims, ""), 0) + sign
        if status == FAILED:
            for reason in reasons_of(reasons):
                acc[(*dims, reason)] = acc.get((*dims, reason), 0) + sign
    return sorted((*key, n) for key, n in acc.items() if n)


def line_deltas(deltas: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """The line rollup's rows (LINE_ROLLUP_COLUMNS) for rollup rows (ROLLUP_COLUMNS)."""
    acc: dict[tuple[Any, ...], int] = {}
    for bucket, campaign, group, supplier, _, _, status, reason, plays in deltas:
        key = (bucket, campaign, group, supplier, status, reason)
        acc[key] = acc.get(key, 0) + plays
    return sorted((*key, n) for key, n in acc.items() if n)


def decided_after(play: Play, decision: Decision) -> tuple[Any, ...]:
    """A decision as an impression row in DECIDED_COLUMNS order (for its rollup delta)."""
    return (
        play.start_ts,
        play.campaign_id,
        play.ad_group_id,
        play.supplier_id,
        play.store_id,
        play.device_id,
        decision.status,
        reasons_text(decision.reasons),
    )
