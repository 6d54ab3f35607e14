"""The journal's invariants under any sequence of operations (hypothesis, stateful).

A model tracks every sequence the journal ever allocated: open, sealed and
queued, finally acked, or evicted (reported or not). After every step the real
journal, on a real SQLite file, must agree with it:

- sequences are strictly increasing, 1, 2, 3, ..., never reused across reopens;
- nothing leaves without a final ack, except by eviction;
- eviction takes the oldest sealed records first and every evicted one is reported;
- delivery order is oldest first.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from playproof.device.journal import Journal
from playproof.protocol import Record, seal
from tests.support import make_record

CAPACITY = 6


class JournalMachine(RuleBasedStateMachine):
    """Drives a real journal and a model side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.folder = Path(tempfile.mkdtemp(prefix="journal-state-"))
        self.journal: Journal | None = None
        self.last_seq = 0
        self.open: dict[int, Record] = {}
        self.queued: list[int] = []
        self.acked: set[int] = set()
        self.evicted: set[int] = set()
        self.reported: set[int] = set()

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    @property
    def j(self) -> Journal:
        assert self.journal is not None
        return self.journal

    @initialize()
    def open_journal(self) -> None:
        self.journal = self.run(Journal.open(self.folder, "scr-1", capacity=CAPACITY))

    def teardown(self) -> None:
        if self.journal is not None:
            self.run(self.journal.aclose())
        self.loop.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    # --- the model's eviction ------------------------------------------------

    def expect_eviction(self) -> list[int]:
        excess = len(self.open) + len(self.queued) + 1 - CAPACITY
        if excess <= 0:
            return []
        return sorted(self.queued)[:excess]

    # --- rules ----------------------------------------------------------------

    @rule()
    def begin(self) -> None:
        evicting = self.expect_eviction()
        record = self.run(self.j.begin(make_record(journal_id=self.j.journal_id)))
        assert record.seq == self.last_seq + 1, "sequences are 1, 2, 3, ... without reuse"
        self.last_seq = record.seq
        self.open[record.seq] = record
        for seq in evicting:
            self.queued.remove(seq)
            self.evicted.add(seq)

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(sorted(self.open)))
        record = self.open.pop(seq)
        self.run(self.j.close(seal(record)))
        self.queued.append(seq)

    @precondition(lambda self: self.queued)
    @rule(data=st.data())
    def final_ack(self, data: st.DataObject) -> None:
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.queued)), unique=True))
        # Acks may also name records that are not there (any more): nothing happens.
        stray = data.draw(st.lists(st.sampled_from(sorted(self.acked | self.evicted | {0}))))
        removed = self.run(self.j.remove(chosen + stray))
        assert removed == len(chosen)
        for seq in chosen:
            self.queued.remove(seq)
            self.acked.add(seq)

    @rule()
    def reopen(self) -> None:
        """A restart: plays that were open come back sealed as device_restart."""
        self.run(self.j.aclose())
        self.journal = self.run(Journal.open(self.folder, "scr-1", capacity=CAPACITY))
        recovered = {r.seq for r in self.j.recovered}
        assert recovered == set(self.open)
        assert all(r.end_reason == "device_restart" for r in self.j.recovered)
        self.queued.extend(sorted(self.open))
        self.open.clear()

    @rule()
    def report_evictions(self) -> None:
        ranges = self.run(self.j.unreported_evictions())
        self.run(self.j.evictions_reported(ranges))
        for r in ranges:
            self.reported.update(range(r.first, r.last + 1))

    # --- invariants -------------------------------------------------------------

    @invariant()
    def every_sequence_is_accounted_for_exactly_once(self) -> None:
        if self.journal is None:
            return
        parts = [set(self.open), set(self.queued), self.acked, self.evicted]
        assert sum(len(p) for p in parts) == self.last_seq
        assert set().union(*parts) == set(range(1, self.last_seq + 1))

    @invariant()
    def delivery_is_oldest_first_and_complete(self) -> None:
        if self.journal is None:
            return
        pending = [p.seq for p in self.run(self.j.pending(limit=10_000))]
        assert pending == sorted(self.queued)

    @invariant()
    def every_eviction_is_reported_until_acknowledged(self) -> None:
        if self.journal is None:
            return
        ranges = self.run(self.j.unreported_evictions())
        unreported = {s for r in ranges for s in range(r.first, r.last + 1)}
        assert unreported == self.evicted - self.reported
        stats = self.run(self.j.stats())
        assert stats.evicted_total == len(self.evicted)
        assert stats.last_seq == self.last_seq


JournalMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_journal_invariants = JournalMachine.TestCase
