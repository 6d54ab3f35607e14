"""Bounded gap tracking on every store: the cap on open gaps, `suspect`, exact fills.

A device sending every other sequence opens a gap per record; past
`max_open_gaps` the store merges new gaps into the journal's last one, so what
it holds (and what a commit reads) stays bounded whatever the device sends.
"""

from __future__ import annotations

import random

from playproof.rules import SequenceState, advance
from playproof.stores.base import Store
from tests.stores.conftest import query
from tests.stores.pipeline import DEVICE, batch, commit_one
from tests.support import make_record


async def _gap_rows(store: Store) -> int:
    rows = await query(store, "SELECT count(*) FROM gaps WHERE device_id = ?", DEVICE)
    return int(rows[0][0])


def _covered(gaps: tuple[tuple[int, ...], ...]) -> set[int]:
    return {s for g in gaps for s in range(g[0], g[1] + 1)}


async def test_every_other_sequence_keeps_the_gap_rows_under_the_cap_and_marks_the_journal(
    store: Store,
) -> None:
    store.max_open_gaps = 40
    sent: set[int] = set()
    for n in range(30):  # 30 batches of 20 odd sequences: 600 gaps uncapped
        seqs = [2 * (20 * n + i) + 1 for i in range(20)]
        await commit_one(store, batch([make_record(seq=s) for s in seqs]))
        sent.update(seqs)
        assert await _gap_rows(store) <= 40
    [journal] = await store.journals(DEVICE)
    assert journal.suspect
    assert len(journal.gaps) == await _gap_rows(store) == 40
    missing = set(range(1, journal.high_water + 1)) - sent
    # An upper bound: every missing sequence is in a gap, and some that arrived are too.
    assert missing < _covered(journal.gaps)
    [count] = await query(store, "SELECT gap_count FROM journals WHERE device_id = ?", DEVICE)
    assert count == (40,)


async def test_a_suspect_journal_is_exact_again_once_every_gap_is_filled(store: Store) -> None:
    store.max_open_gaps = 2
    records = {s: make_record(seq=s) for s in range(1, 10)}
    await commit_one(store, batch([records[s] for s in (1, 3, 5, 7, 9)]))
    [journal] = await store.journals(DEVICE)
    assert journal.suspect and [g[:2] for g in journal.gaps] == [(2, 2), (4, 8)]
    await commit_one(store, batch([records[s] for s in (2, 4, 6, 8)]))
    [journal] = await store.journals(DEVICE)
    # 5 and 7 arrived before the merge: the store cannot tell them from missing ones.
    assert journal.suspect and [g[:2] for g in journal.gaps] == [(5, 5), (7, 7)]
    acks = await commit_one(store, batch([records[5], records[7]]))
    assert [a[1] for a in acks] == ["duplicate", "duplicate"]
    [journal] = await store.journals(DEVICE)
    assert (journal.gaps, journal.suspect) == ((), False)
    assert await store.gap_count() == 0


async def test_late_records_anywhere_in_a_journal_fill_exactly_what_the_rules_say(
    store: Store,
) -> None:
    """Commits read only the gaps their arrivals reach; the result is that of reading all."""
    rng = random.Random(12)
    firsts = list(range(1, 400, 3))  # 133 gaps of two
    late = [s for s in range(1, 400) if s % 3 != 1]
    rng.shuffle(late)
    batches = [firsts[:60], firsts[60:], *(late[i : i + 25] for i in range(0, len(late), 25))]
    expected = SequenceState(0, 0, ())
    for n, seqs in enumerate(batches):
        if n > 2:
            seqs = [*seqs, 400 + n]  # new gaps open in the same commit as fills
        await commit_one(store, batch([make_record(seq=s) for s in seqs]))
        expected = advance(expected, [(s, 0) for s in seqs], store.max_open_gaps).state
        [journal] = await store.journals(DEVICE)
        assert [g[:2] for g in journal.gaps] == [g[:2] for g in expected.gaps]
        assert journal.high_water == expected.high_water
