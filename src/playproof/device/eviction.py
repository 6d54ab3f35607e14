"""What a journal keeps, and what it drops for lack of room: oldest first, counted, reported.

The journal is bounded by time and space, not by a count of plays, because a
screen showing 2-second content makes seven times the records of one showing
15-second content in the same four hours:

- **Time**: a sealed record that ended less than `keep_ms` (the offline limit,
  4 h) before the play now starting is never evicted for its number, whatever
  the plays' length. Past `capacity` records, older ones go, oldest first; up to
  it they are kept and sent (the service rejects them as `stale`, for its audit).
- **Space**: past `queue_max_bytes` of queued records, or when the disk is nearly
  full (`diskspace.disk_low`, SQLITE_FULL), the oldest go whatever their age.

Open plays are never evicted. Every evicted sequence is counted (`evicted_total`)
and kept in the `evictions` table as ranges until a status message that reports
them has been stored by the service; the ledger notes each one `evicted`.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple

from playproof.device import ledger as ledgers
from playproof.rules import DEFAULT_POLICY

log = logging.getLogger(__name__)

# Records kept at most past the time bound: 8 hours of plays at one every 5 seconds.
DEFAULT_CAPACITY: Final = 5760
# Keep what the service would still accept: the protocol's offline limit.
DEFAULT_KEEP_MS: Final = DEFAULT_POLICY.offline_limit_ms
# Queued records' bytes at most: about 100,000 records (a record is 450 to 700
# bytes), 27 hours of 1-second plays; the ledger's history comes on top.
DEFAULT_QUEUE_BYTES: Final = 64 * 1024 * 1024
# Under a full disk, make room by evicting this many of the oldest records at once.
DISK_FULL_EVICTION: Final = 64
# Sequences per DELETE statement (SQLite's limit on parameters is far above).
_CHUNK: Final = 500


class EvictedRange(NamedTuple):
    """Sequences `first..last` dropped for lack of space, not yet reported."""

    first: int
    last: int

    @property
    def size(self) -> int:
        """How many records the range holds."""
        return self.last - self.first + 1


class Removed(NamedTuple):
    """Records that left the queue: how many, and the bytes of their bodies."""

    records: int
    size: int


NOTHING: Final = Removed(0, 0)


def victims(
    conn: sqlite3.Connection, *, over_count: int, older_than: int, over_bytes: int
) -> list[int]:
    """The oldest sealed records to evict, a prefix of the queue in sequence order.

    Taken while the queue is over its bytes (whatever their age), then while it is
    over its count and the record ended before `older_than`; the first record that
    is neither ends the prefix, so a younger record is never passed over.
    """
    if over_count <= 0 and over_bytes <= 0:
        return []
    cursor = conn.execute(
        "SELECT seq, end_ts, length(body) FROM plays WHERE state = 'ready' ORDER BY seq"
    )
    seqs: list[int] = []
    for seq, end_ts, size in cursor:
        if over_bytes > 0:
            over_bytes -= size
        elif not (over_count > 0 and end_ts < older_than):
            break
        over_count -= 1
        seqs.append(seq)
    cursor.close()
    return seqs


def oldest(conn: sqlite3.Connection, count: int) -> list[int]:
    """The `count` oldest sealed records, whatever their age (a full disk)."""
    sql = "SELECT seq FROM plays WHERE state = 'ready' ORDER BY seq LIMIT ?"
    return [row[0] for row in conn.execute(sql, (count,))]


def delete_sealed(conn: sqlite3.Connection, seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Delete these sealed records (open plays stay); (seq, body bytes) of those deleted."""
    gone: list[tuple[int, int]] = []
    for start in range(0, len(seqs), _CHUNK):
        chunk = seqs[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        gone += conn.execute(
            f"DELETE FROM plays WHERE state = 'ready' AND seq IN ({marks}) "
            "RETURNING seq, length(body)",
            chunk,
        ).fetchall()
    return gone


def evict(conn: sqlite3.Connection, seqs: Sequence[int]) -> Removed:
    """Drop these sealed records, note their ranges for reporting and count them."""
    if not seqs:
        return NOTHING
    gone = delete_sealed(conn, seqs)
    evicted = sorted(seq for seq, _ in gone)
    ledgers.evicted(conn, evicted)
    first_of_run = conn.execute("SELECT 1 FROM evictions LIMIT 1").fetchone() is None
    for first, last in runs(evicted):
        _add_range(conn, first, last)
    if evicted:
        conn.execute(
            "UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'evicted_total'",
            (len(evicted),),
        )
        # Loud once per run of evictions (until a status reports them), quiet after.
        log.log(
            logging.WARNING if first_of_run else logging.DEBUG,
            "journal full: evicting the oldest records, seq %d..%d now",
            evicted[0],
            evicted[-1],
        )
    return Removed(len(evicted), sum(size for _, size in gone))


def unreported(conn: sqlite3.Connection) -> tuple[EvictedRange, ...]:
    """Ranges evicted since the last status that reached the service."""
    rows = conn.execute("SELECT first_seq, last_seq FROM evictions ORDER BY first_seq")
    return tuple(EvictedRange(first, last) for first, last in rows)


def reported(conn: sqlite3.Connection, ranges: Iterable[EvictedRange]) -> None:
    """Forget ranges a status message delivered; a range grown since keeps its new part."""
    for first, last in ranges:
        conn.execute("DELETE FROM evictions WHERE first_seq = ? AND last_seq = ?", (first, last))
        conn.execute(
            "UPDATE evictions SET first_seq = ? WHERE first_seq = ? AND last_seq > ?",
            (last + 1, first, last),
        )


def _add_range(conn: sqlite3.Connection, first: int, last: int) -> None:
    """Extend the latest unreported range when contiguous, else start a new one."""
    row = conn.execute(
        "SELECT first_seq, last_seq FROM evictions ORDER BY first_seq DESC LIMIT 1"
    ).fetchone()
    if row is not None and row[1] + 1 == first:
        conn.execute("UPDATE evictions SET last_seq = ? WHERE first_seq = ?", (last, row[0]))
    else:
        conn.execute("INSERT INTO evictions (first_seq, last_seq) VALUES (?, ?)", (first, last))


def runs(seqs: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted integers as (first, last) pairs."""
    found: list[tuple[int, int]] = []
    for seq in seqs:
        if found and found[-1][1] + 1 == seq:
            found[-1] = (found[-1][0], seq)
        else:
            found.append((seq, seq))
    return found


class Bounds(NamedTuple):
    """What a journal keeps: see the module's docstring."""

    capacity: int = DEFAULT_CAPACITY
    keep_ms: int = DEFAULT_KEEP_MS
    queue_max_bytes: int = DEFAULT_QUEUE_BYTES

    def check(self) -> Bounds:
        """These bounds, if they can work; ValueError saying what is wrong otherwise."""
        if self.capacity < 1:
            raise ValueError(f"journal capacity must be at least 1 record, got {self.capacity}")
        if self.keep_ms < 0:
            raise ValueError(f"expected a time to keep records of 0 ms or more, got {self.keep_ms}")
        if self.queue_max_bytes < 1:
            raise ValueError(
                f"expected a queue byte limit of at least 1, got {self.queue_max_bytes}"
            )
        return self
