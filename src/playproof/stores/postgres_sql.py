"""The SQL text of the PostgreSQL store, kept apart from the code that runs it.

Rows travel by binary COPY, everything else as arrays (`unnest`), so that a
statement's text never depends on the number of rows: PostgreSQL prepares
each statement once per connection.
"""

from __future__ import annotations

from typing import Final

from playproof.stores.base import IMPRESSION_COLUMNS, REJECT_COLUMNS, RejectInfo

# PostgreSQL type of every impression column, for the binary COPY.
IMPRESSION_TYPES: Final[dict[str, str]] = {
    **dict.fromkeys(IMPRESSION_COLUMNS, "text"),
    **dict.fromkeys(
        (
            "seq",
            "start_ts",
            "end_ts",
            "duration_ms",
            "expected_ms",
            "clock_offset_ms",
            "screenshot_at_ms",
            "received_at",
            "skew_ms",
        ),
        "int8",
    ),
    "clock_synced": "bool",
    "quality": "int4",
}

KEY_COLUMNS: Final = ("device_id", "journal_id", "seq", "checksum", "start_ts")
KEY_TYPES: Final = [IMPRESSION_TYPES[c] for c in KEY_COLUMNS]
COPY_KEYS: Final = f"COPY impression_keys ({', '.join(KEY_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
COPY_IMPRESSIONS: Final = (
    f"COPY impressions ({', '.join(IMPRESSION_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
)

# Creating the journal rows that are new and locking all of them, in the order
# given (sorted by the caller, so that concurrent commits never deadlock), and
# reading their state once locked: one statement.
LOCK_JOURNALS: Final = (
    "INSERT INTO journals AS j (device_id, journal_id, high_water, high_water_ts, "
    "first_seen, last_seen) "
    "SELECT d, jn, 0, 0, %(now)s, %(now)s "
    "FROM unnest(%(devices)s::text[], %(journals)s::text[]) WITH ORDINALITY AS t(d, jn, n) "
    "ORDER BY n "
    "ON CONFLICT (device_id, journal_id) DO UPDATE SET last_seen = excluded.last_seen "
    "RETURNING device_id, journal_id, high_water, high_water_ts, gap_count, suspect"
)
# Per journal, only the gaps its arrivals can fill or extend (stores.base.gap_window):
# those overlapping lo..hi (NULL when no arrival is at or below the high-water mark),
# from the last one starting at or below lo (gaps never overlap) along the primary key,
# and the journal's last gap when `last`.
SELECT_GAPS: Final = (
    "SELECT q.d, q.jn, g.first_seq, g.last_seq, g.before_ts, g.after_ts "
    "FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::boolean[]) "
    "AS q(d, jn, lo, hi, last) "
    "CROSS JOIN LATERAL ("
    "SELECT * FROM gaps g WHERE g.device_id = q.d AND g.journal_id = q.jn "
    "AND g.first_seq BETWEEN COALESCE((SELECT max(p.first_seq) FROM gaps p "
    "WHERE p.device_id = q.d AND p.journal_id = q.jn AND p.first_seq <= q.lo), q.lo) "
    "AND q.hi AND g.last_seq >= q.lo "
    "UNION SELECT * FROM (SELECT * FROM gaps l WHERE q.last AND l.device_id = q.d "
    "AND l.journal_id = q.jn ORDER BY l.first_seq DESC LIMIT 1) AS lg"
    ") AS g"
)
SELECT_CHECKSUMS: Final = (
    "SELECT k.device_id, k.journal_id, k.seq, k.checksum "
    "FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS q(d, jn, s) "
    "JOIN impression_keys k ON k.device_id = q.d AND k.journal_id = q.jn AND k.seq = q.s"
)
DELETE_GAPS: Final = (
    "DELETE FROM gaps g USING unnest(%s::text[], %s::text[], %s::bigint[]) AS q(d, jn, f) "
    "WHERE g.device_id = q.d AND g.journal_id = q.jn AND g.first_seq = q.f"
)
INSERT_GAPS: Final = (
    "INSERT INTO gaps (device_id, journal_id, first_seq, last_seq, before_ts, after_ts) "
    "SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], "
    "%s::bigint[], %s::bigint[])"
)
UPDATE_JOURNALS: Final = (
    "UPDATE journals j SET high_water = q.h, high_water_ts = q.t, gap_count = q.c, "
    "suspect = q.s, last_seen = %s "
    "FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::bigint[], "
    "%s::boolean[]) AS q(d, jn, h, t, c, s) "
    "WHERE j.device_id = q.d AND j.journal_id = q.jn"
)

# Taken in ascending order, for reject keys no journal lock covers.
ADVISORY_LOCKS: Final = "SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) AS k"

# The type of every reject column, then `times`.
_REJECT_TYPES: Final = [
    *(
        "bigint" if name in ("seq", "sent_at", "received_at", "skew_ms") else "text"
        for name in REJECT_COLUMNS
    ),
    "integer",
]
_T = [f"c{i}" for i in range(len(_REJECT_TYPES))]
UPSERT_REJECTS: Final = (
    f"INSERT INTO rejects ({', '.join(REJECT_COLUMNS)}, times) "
    f"SELECT {', '.join(_T)} FROM unnest("
    + ", ".join(f"%s::{t}[]" for t in _REJECT_TYPES)
    + f") WITH ORDINALITY AS t({', '.join(_T)}, n) ORDER BY n "
    "ON CONFLICT (device_id, journal_id, seq, checksum, reason) "
    "DO UPDATE SET times = rejects.times + excluded.times, received_at = excluded.received_at"
)

INSERT_DEVICE: Final = (
    "INSERT INTO devices (device_id, store_id, token_hash, created_at, revoked_at) "
    "VALUES (%s, %s, %s, %s, %s)"
)
SELECT_DEVICE: Final = "SELECT device_id, store_id, created_at, revoked_at FROM devices "
REVOKE_DEVICE: Final = (
    "UPDATE devices SET revoked_at = COALESCE(revoked_at, %s) WHERE device_id = %s"
)
ROTATE_DEVICE: Final = "UPDATE devices SET token_hash = %s, revoked_at = NULL WHERE device_id = %s"

UPSERT_STATUS: Final = (
    "INSERT INTO device_status AS s (device_id, received_at, payload, evicted_total) "
    "VALUES (%s, %s, %s::json, %s) ON CONFLICT (device_id) DO UPDATE SET "
    "received_at = excluded.received_at, payload = excluded.payload, "
    "evicted_total = s.evicted_total + excluded.evicted_total"
)
INSERT_EVICTIONS: Final = (
    "INSERT INTO evictions (device_id, journal_id, first_seq, last_seq, reported_at) "
    "SELECT %s, %s, f, l, %s FROM unnest(%s::bigint[], %s::bigint[]) AS q(f, l) "
    "ON CONFLICT DO NOTHING"
)
SELECT_STATUS: Final = (
    "SELECT received_at, payload::text, evicted_total FROM device_status WHERE device_id = %s"
)
SELECT_EVICTIONS: Final = (
    "SELECT journal_id, first_seq, last_seq FROM evictions WHERE device_id = %s "
    "ORDER BY journal_id, first_seq"
)
INSERT_SCREENSHOT: Final = (
    "INSERT INTO screenshots (sha256, content_type, size, device_id, received_at) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (sha256) DO NOTHING"
)

# Journals with their gaps in one statement, so that both come from one snapshot.
SELECT_JOURNALS: Final = (
    "SELECT j.device_id, j.journal_id, j.high_water, j.first_seen, j.last_seen, j.suspect, "
    "COALESCE((SELECT array_agg(ARRAY[g.first_seq, g.last_seq, g.before_ts, g.after_ts] "
    "ORDER BY g.first_seq) FROM gaps g "
    "WHERE g.device_id = j.device_id AND g.journal_id = j.journal_id), '{}') "
    "FROM journals j WHERE %(device)s::text IS NULL OR j.device_id = %(device)s "
    "ORDER BY j.device_id, j.first_seen, j.journal_id"
)
SELECT_REJECTS: Final = (
    f"SELECT {', '.join(RejectInfo._fields)} FROM rejects "
    "WHERE (%(device)s::text IS NULL OR submitted_by = %(device)s) "
    "AND (%(reason)s::text IS NULL OR reason = %(reason)s) "
    "ORDER BY id DESC LIMIT %(limit)s"
)

INSERT_OPERATOR: Final = (
    "INSERT INTO operators (name, token_hash, created_at, revoked_at) VALUES (%s, %s, %s, %s)"
)
SELECT_OPERATOR_CREDENTIAL: Final = (
    "SELECT name, created_at, revoked_at, token_hash FROM operators WHERE token_hash = %s"
)
SELECT_OPERATORS: Final = "SELECT name, created_at, revoked_at FROM operators ORDER BY name"
REVOKE_OPERATOR: Final = (
    "UPDATE operators SET revoked_at = COALESCE(revoked_at, %s) WHERE name = %s"
)

# Reconciliation: what the service holds of some devices, from one snapshot.
REPEATABLE_READ: Final = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"
HELD_IMPRESSIONS: Final = (
    "SELECT device_id, journal_id, seq, checksum, status, start_ts, content_id "
    "FROM impressions WHERE device_id = ANY(%s)"
)
HELD_REJECTS: Final = (
    "SELECT device_id, journal_id, seq, checksum, reason FROM rejects WHERE submitted_by = ANY(%s) "
    "AND (replay_result IS NULL OR replay_result NOT IN ('accepted', 'duplicate'))"
)
MARK_REPLAYED: Final = "UPDATE rejects SET replayed_at = %s, replay_result = %s WHERE id = %s"
