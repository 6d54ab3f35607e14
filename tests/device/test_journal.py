"""The journal on real SQLite files: creation, durability, sequences, eviction, faults."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from playproof.device.journal import JOURNAL_FILE, Journal
from playproof.errors import JournalError
from playproof.protocol import Record, seal
from playproof.rules import HOUR_MS
from tests.support import make_record, now_ms

# Plays this far apart are each past the 4 h offline limit when the next one starts.
OLD_SPACING_MS = 5 * HOUR_MS


async def add_sealed(journal: Journal, count: int, spacing_ms: int = 0) -> list[Record]:
    """Begin and close `count` plays, `spacing_ms` apart (0: all just now); the sealed records."""
    out = []
    first_end = now_ms() - 1000 - spacing_ms * count
    for i in range(count):
        end = first_end + spacing_ms * (i + 1) if spacing_ms else None
        record = await journal.begin(make_record(journal_id=journal.journal_id, end_ts=end))
        sealed = seal(record)
        await journal.close(sealed)
        out.append(sealed)
    return out


async def test_a_new_journal_is_wal_full_sync_with_its_own_id(data_dir: Path) -> None:
    journal = await Journal.open(data_dir, "scr-1")
    journal_id = journal.journal_id
    # Read on the journal's own connection: `synchronous` is per connection, not in the file.
    assert journal.synchronous == "full"
    await journal.aclose()
    conn = sqlite3.connect(data_dir / JOURNAL_FILE)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    again = await Journal.open(data_dir, "scr-1")
    assert again.journal_id == journal_id
    assert journal_id.startswith("j-")
    await again.aclose()
    other = await Journal.open(data_dir.parent / "other", "scr-1")
    assert other.journal_id != journal_id
    await other.aclose()


async def test_sequences_resume_after_reopen_and_are_never_reused(data_dir: Path) -> None:
    journal = await Journal.open(data_dir, "scr-1")
    first = await add_sealed(journal, 3)
    await journal.remove([r.seq for r in first])
    await journal.aclose()
    journal = await Journal.open(data_dir, "scr-1")
    later = await add_sealed(journal, 2)
    assert [r.seq for r in first + later] == [1, 2, 3, 4, 5]
    await journal.aclose()


async def test_a_record_leaves_only_by_a_final_ack_and_pending_is_oldest_first(
    data_dir: Path,
) -> None:
    journal = await Journal.open(data_dir, "scr-1")
    await add_sealed(journal, 5)
    assert [p.seq for p in await journal.pending()] == [1, 2, 3, 4, 5]
    assert [p.seq for p in await journal.pending(after=2, limit=2)] == [3, 4]
    assert await journal.remove([2, 4]) == 2
    assert [p.seq for p in await journal.pending()] == [1, 3, 5]
    assert await journal.remove([2]) == 0
    await journal.aclose()


async def test_an_open_play_is_not_delivered_until_it_ends(data_dir: Path) -> None:
    journal = await Journal.open(data_dir, "scr-1")
    await add_sealed(journal, 1)
    open_play = await journal.begin(make_record(journal_id=journal.journal_id))
    assert [p.seq for p in await journal.pending()] == [1]
    assert await journal.remove([open_play.seq]) == 0
    stats = await journal.stats()
    assert (stats.queue_depth, stats.open_plays) == (1, 1)
    await journal.aclose()


async def test_past_capacity_the_oldest_are_evicted_counted_and_kept_for_report(
    data_dir: Path,
) -> None:
    """Records past the offline limit go when the journal holds more than its capacity."""
    journal = await Journal.open(data_dir, "scr-1", capacity=3)
    await add_sealed(journal, 7, OLD_SPACING_MS)
    stats = await journal.stats()
    assert [p.seq for p in await journal.pending()] == [5, 6, 7]
    assert stats.evicted_total == 4
    assert [(r.first, r.last) for r in stats.unreported] == [(1, 4)]
    await journal.aclose()
    journal = await Journal.open(data_dir, "scr-1", capacity=3)
    ranges = await journal.unreported_evictions()
    assert [(r.first, r.last) for r in ranges] == [(1, 4)]
    await add_sealed(journal, 1)  # now: seq 5, ended 5 h before it, makes way
    await journal.evictions_reported(ranges)
    # Seq 5 was evicted after the status was built: it stays to be reported next time.
    assert [(r.first, r.last) for r in await journal.unreported_evictions()] == [(5, 5)]
    await journal.aclose()


async def test_a_crash_leaves_open_plays_closed_as_device_restart_from_the_checkpoint(
    data_dir: Path,
) -> None:
    journal = await Journal.open(data_dir, "scr-1")
    record = await journal.begin(make_record(journal_id=journal.journal_id, duration_ms=0))
    record.duration_ms, record.end_ts = 4_000, record.start_ts + 4_000
    record.end_reason = "device_restart"
    await journal.checkpoint(record)
    await journal.aclose()  # what is on disk is what a power cut leaves: committed only
    journal = await Journal.open(data_dir, "scr-1")
    [recovered] = journal.recovered
    assert (recovered.seq, recovered.end_reason, recovered.duration_ms) == (
        1,
        "device_restart",
        4000,
    )
    assert recovered.checksum == seal(recovered).checksum
    assert [p.seq for p in await journal.pending()] == [1]
    await journal.aclose()


async def test_garbage_bytes_move_the_journal_aside_and_start_a_new_one(data_dir: Path) -> None:
    journal = await Journal.open(data_dir, "scr-1")
    old_id = journal.journal_id
    await journal.aclose()
    (data_dir / JOURNAL_FILE).write_bytes(b"this is not a database" * 100)
    journal = await Journal.open(data_dir, "scr-1")
    assert journal.journal_id != old_id
    assert journal.reset_reason is not None and "corrupt" in journal.reset_reason
    aside = list(data_dir.glob("journal.corrupt-*"))
    assert aside and aside[0].read_bytes().startswith(b"this is not a database")
    assert [r.seq for r in await add_sealed(journal, 1)] == [1]
    await journal.aclose()


async def test_another_devices_journal_is_refused(data_dir: Path) -> None:
    journal = await Journal.open(data_dir, "scr-1")
    await journal.aclose()
    with pytest.raises(JournalError, match="belongs to device 'scr-1'"):
        await Journal.open(data_dir, "scr-2")


async def test_a_journal_in_use_by_another_opener_is_refused(data_dir: Path) -> None:
    journal = await Journal.open(data_dir, "scr-1")
    await add_sealed(journal, 1)
    with pytest.raises(JournalError, match="in use by another process"):
        await Journal.open(data_dir, "scr-1")
    await journal.aclose()


async def test_a_data_folder_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(JournalError, match="cannot create data folder"):
        await Journal.open(blocker / "device", "scr-1")
    with pytest.raises(JournalError, match="is not a folder"):
        await Journal.open(blocker, "scr-1")


async def test_a_full_disk_evicts_the_oldest_and_recording_goes_on(data_dir: Path) -> None:
    """The journal file may not grow past its byte limit: SQLite answers SQLITE_FULL."""
    journal = await Journal.open(data_dir, "scr-1", capacity=100_000, max_bytes=96 * 1024)
    records = await add_sealed(journal, 400)
    stats = await journal.stats()
    assert records[-1].seq == 400
    assert stats.evicted_total > 0
    assert stats.queue_depth + stats.evicted_total == 400
    assert [(r.first, r.last) for r in stats.unreported] == [(1, stats.evicted_total)]
    await journal.aclose()


async def test_records_ending_in_the_future_wait_in_order(data_dir: Path) -> None:
    """A record stamped before the clock was corrected back is held until its end is past."""
    journal = await Journal.open(data_dir, "scr-1")
    base = 1_795_000_000_000
    for end in (1_000, 5_000, 2_000, 3_000):
        record = make_record(journal_id=journal.journal_id, end_ts=base + end)
        await journal.close(seal(await journal.begin(record)))
    assert [p.seq for p in await journal.pending(until_ts=base + 4_000)] == [1]
    assert [p.seq for p in await journal.pending(until_ts=base + 5_000)] == [1, 2, 3, 4]
    await journal.aclose()


async def test_a_fast_journal_says_so_the_setting_is_read_from_sqlite(data_dir: Path) -> None:
    """`synchronous` is what the connection does, not what was asked: a simulation's shows."""
    fast = await Journal.open(data_dir, "scr-1", synchronous="off")
    assert fast.synchronous == "off"
    await fast.aclose()
    durable = await Journal.open(data_dir, "scr-1")
    assert durable.synchronous == "full"
    await durable.aclose()
    with pytest.raises(JournalError, match="synchronous"):
        await Journal.open(data_dir, "scr-1", synchronous="sometimes")


async def test_four_hours_of_two_second_plays_are_kept_whatever_the_capacity(
    data_dir: Path,
) -> None:
    """The capacity bounds records past the offline limit only: none younger is evicted."""
    journal = await Journal.open(data_dir, "scr-1", capacity=3)
    first_start = now_ms() - HOUR_MS
    for i in range(40):
        start = first_start + i * 2000
        record = make_record(
            journal_id=journal.journal_id,
            start_ts=start,
            end_ts=start + 2000,
            duration_ms=2000,
            expected_ms=2000,
        )
        await journal.close(seal(await journal.begin(record)))
    stats = await journal.stats()
    assert (stats.queue_depth, stats.evicted_total, stats.unreported) == (40, 0, ())
    await journal.aclose()


async def test_over_its_space_the_oldest_go_whatever_their_age_and_are_reported(
    data_dir: Path,
) -> None:
    journal = await Journal.open(data_dir, "scr-1", queue_max_bytes=2000)
    await add_sealed(journal, 10)
    stats = await journal.stats()
    pending = await journal.pending()
    assert stats.evicted_total > 0
    assert [(r.first, r.last) for r in stats.unreported] == [(1, stats.evicted_total)]
    assert [p.seq for p in pending] == list(range(stats.evicted_total + 1, 11))
    assert journal.queue_bytes == sum(len(p.body) for p in pending) <= 2000
    await journal.aclose()
    again = await Journal.open(data_dir, "scr-1", queue_max_bytes=2000)
    assert again.queue_bytes == sum(len(p.body) for p in pending), "counted again at open"
    await again.aclose()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lengths=st.lists(st.integers(1, HOUR_MS), min_size=1, max_size=20),
    capacity=st.integers(1, 6),
)
def test_every_play_younger_than_the_offline_limit_is_kept_whatever_their_lengths(
    lengths: list[int], capacity: int
) -> None:
    """Back-to-back plays of any lengths: evictions are an oldest-first prefix, all reported,
    and none of them ended within 4 h of the play that was starting when it went."""
    with tempfile.TemporaryDirectory(prefix="journal-keep-") as folder:
        asyncio.run(_play_back_to_back(Path(folder), lengths, capacity))


async def _play_back_to_back(folder: Path, lengths: list[int], capacity: int) -> None:
    journal = await Journal.open(folder, "scr-1", capacity=capacity)
    start = now_ms() - sum(lengths)
    ends: dict[int, int] = {}
    evicted = 0
    for length in lengths:
        fields = {"start_ts": start, "end_ts": start + length, "duration_ms": length}
        record = make_record(journal_id=journal.journal_id, expected_ms=length, **fields)
        await journal.begin(record)
        stats = await journal.stats()
        gone = range(evicted + 1, stats.evicted_total + 1)
        assert all(ends[seq] < start - 4 * HOUR_MS for seq in gone), "a young play evicted"
        evicted = stats.evicted_total
        oldest_kept = ends.get(evicted + 1)
        # Past its capacity, the journal holds no record it may evict any more.
        assert journal.size <= capacity or oldest_kept is None or oldest_kept >= start - 4 * HOUR_MS
        await journal.close(seal(record))
        ends[record.seq] = record.end_ts
        start += length
    queued = [p.seq for p in await journal.pending(limit=10_000)]
    stats = await journal.stats()
    await journal.aclose()
    assert queued == list(range(evicted + 1, len(lengths) + 1)), "oldest first, a prefix"
    assert [(r.first, r.last) for r in stats.unreported] == ([(1, evicted)] if evicted else [])
