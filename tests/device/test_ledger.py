"""The device ledger on real journal files: what was recorded, and what became of it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from playproof.device.journal import JOURNAL_FILE, Journal
from playproof.device.ledger import outcome_of, read_ledger
from playproof.errors import JournalError
from playproof.protocol import Record, seal
from tests.device.test_journal import OLD_SPACING_MS, add_sealed
from tests.support import make_record, now_ms

DAY_MS = 24 * 3600 * 1000


async def test_a_sealed_record_is_queued_in_the_ledger_with_its_checksum(data_dir: Path) -> None:
    journal = await Journal.open(data_dir, "scr-1")
    [record] = await add_sealed(journal, 1)
    view = await journal.ledger()
    [row] = view.rows
    assert (row.seq, row.checksum, row.outcome) == (1, record.checksum, None)
    assert (row.content_id, row.end_reason, row.start_ts, row.end_ts) == (
        record.content_id,
        record.end_reason,
        record.start_ts,
        record.end_ts,
    )
    assert (view.device_id, view.journal_id, view.last_seq, view.floor) == (
        "scr-1",
        journal.journal_id,
        1,
        0,
    )
    await journal.aclose()


async def test_an_open_play_is_not_in_the_ledger_until_it_is_sealed(data_dir: Path) -> None:
    journal = await Journal.open(data_dir, "scr-1")
    play = await journal.begin(make_record(journal_id=journal.journal_id))
    view = await journal.ledger()
    assert (view.rows, view.open_seqs) == ((), (play.seq,))
    await journal.close(seal(play))
    assert [r.seq for r in (await journal.ledger()).rows] == [play.seq]
    await journal.aclose()


async def test_final_acks_note_their_outcome_and_strays_change_nothing(data_dir: Path) -> None:
    journal = await Journal.open(data_dir, "scr-1")
    await add_sealed(journal, 4)
    outcomes = ["accepted:valid", "duplicate", "rejected:stale"]
    assert await journal.remove([1, 2, 3], outcomes) == 3
    assert await journal.remove([1, 99], ["rejected:conflict", "duplicate"]) == 0
    rows = (await journal.ledger()).rows
    assert [(r.seq, r.outcome) for r in rows] == [
        (1, "accepted:valid"),
        (2, "duplicate"),
        (3, "rejected:stale"),
        (4, None),
    ]
    await journal.aclose()


def test_the_ledger_names_acks_as_the_reconciliation_reads_them() -> None:
    assert outcome_of("accepted", "partial", None) == "accepted:partial"
    assert outcome_of("rejected", None, "clock_skew") == "rejected:clock_skew"
    assert outcome_of("duplicate", None, None) == "duplicate"


async def test_evicted_records_are_marked_evicted(data_dir: Path) -> None:
    journal = await Journal.open(data_dir, "scr-1", capacity=3)
    await add_sealed(journal, 5, OLD_SPACING_MS)
    rows = (await journal.ledger()).rows
    assert [(r.seq, r.outcome) for r in rows] == [
        (1, "evicted"),
        (2, "evicted"),
        (3, None),
        (4, None),
        (5, None),
    ]
    await journal.aclose()


async def test_a_play_left_open_by_a_crash_enters_the_ledger_as_device_restart(
    data_dir: Path,
) -> None:
    journal = await Journal.open(data_dir, "scr-1")
    await journal.begin(make_record(journal_id=journal.journal_id))
    await journal.aclose()  # no close of the play: what a crash leaves
    journal = await Journal.open(data_dir, "scr-1")
    [row] = (await journal.ledger()).rows
    assert (row.seq, row.end_reason, row.outcome) == (1, "device_restart", None)
    assert row.checksum == journal.recovered[0].checksum
    await journal.aclose()


async def sealed_at(journal: Journal, end_ts: int) -> Record:
    record = await journal.begin(make_record(journal_id=journal.journal_id, end_ts=end_ts))
    await journal.close(seal(record))
    return record


async def test_settled_rows_older_than_the_retention_are_pruned_as_a_prefix(
    data_dir: Path,
) -> None:
    journal = await Journal.open(data_dir, "scr-1", retention_ms=DAY_MS)
    old = now_ms() - 10 * DAY_MS
    for i in range(4):
        await sealed_at(journal, old + i)  # seq 1-4, ten days old
    await sealed_at(journal, now_ms())  # seq 5, new
    await journal.remove([1, 2, 4, 5], ["accepted:valid"] * 4)  # 3 stays queued
    await journal.aclose()
    journal = await Journal.open(data_dir, "scr-1", retention_ms=DAY_MS)  # prunes at open
    view = await journal.ledger()
    # Only the prefix before the queued record goes; 4 is old but stays.
    assert view.floor == 2
    assert [r.seq for r in view.rows] == [3, 4, 5]
    await journal.aclose()


async def test_read_ledger_reads_a_stopped_journal_and_refuses_a_running_one(
    data_dir: Path,
) -> None:
    journal = await Journal.open(data_dir, "scr-1")
    await add_sealed(journal, 2)
    with pytest.raises(JournalError, match="in use"):
        read_ledger(data_dir / JOURNAL_FILE)
    await journal.aclose()
    view = read_ledger(data_dir / JOURNAL_FILE)
    assert [r.seq for r in view.rows] == [1, 2]
    # Reading wrote nothing: the device reopens the same journal.
    again = await Journal.open(data_dir, "scr-1")
    assert again.journal_id == view.journal_id
    await again.aclose()


def test_read_ledger_on_a_file_that_is_no_journal_says_so(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(JournalError, match="cannot read the ledger"):
        read_ledger(path)


async def test_a_journal_from_before_the_ledger_gets_one_with_its_history_outside(
    data_dir: Path,
) -> None:
    journal = await Journal.open(data_dir, "scr-1")
    await add_sealed(journal, 3)
    await journal.remove([1])
    await journal.aclose()
    # Make it look like a journal written by a playproof without a ledger.
    conn = sqlite3.connect(data_dir / JOURNAL_FILE)
    conn.execute("DROP TABLE ledger")
    conn.execute("DELETE FROM meta WHERE key = 'ledger_floor'")
    conn.commit()
    conn.close()
    journal = await Journal.open(data_dir, "scr-1")
    view = await journal.ledger()
    assert view.floor == 3  # nothing before the upgrade is claimed
    assert [(r.seq, r.outcome) for r in view.rows] == [(2, None), (3, None)]
    await journal.aclose()
