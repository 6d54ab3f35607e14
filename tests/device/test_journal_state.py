"""The journal's invariants under any sequence of operations (hypothesis, stateful).

A model tracks every sequence the journal ever allocated: open, sealed and
queued, finally acked, or evicted (reported or not). After every step the real
journal, on a real SQLite file, must agree with it:

- sequences are strictly increasing, 1, 2, 3, ..., never reused across reopens;
- nothing leaves without a final ack, except by eviction;
- eviction takes the oldest sealed records first, only those past the time bound
  when the journal is over its count, any when it is over its bytes, and every
  evicted one is reported;
- the journal's count of queued bytes is exact;
- delivery order is oldest first.

Time is the model's own: each play starts a drawn while after the last one.
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
from playproof.protocol import Record, record_json, seal
from tests.support import make_record

CAPACITY = 6
KEEP_MS = 60_000
# About eight records of `make_record`'s size.
QUEUE_BYTES = 8 * 450
START_TS = 1_795_000_000_000


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
        self.now = START_TS
        self.ends: dict[int, int] = {}  # queued seq: its end_ts as stored
        self.sizes: dict[int, int] = {}  # open or queued seq: its body's bytes

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    @property
    def j(self) -> Journal:
        assert self.journal is not None
        return self.journal

    def open_(self, **extra: int) -> Journal:
        bounds = {"capacity": CAPACITY, "keep_ms": KEEP_MS, "queue_max_bytes": QUEUE_BYTES}
        return self.run(Journal.open(self.folder, "scr-1", **bounds, **extra))  # type: ignore[arg-type]

    @initialize()
    def open_journal(self) -> None:
        self.journal = self.open_()

    def teardown(self) -> None:
        if self.journal is not None:
            self.run(self.journal.aclose())
        self.loop.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    # --- the model's eviction ------------------------------------------------

    def expect_eviction(self, incoming: int) -> list[int]:
        """The oldest queued records while over the bytes, then while over the count and old."""
        over_count = len(self.open) + len(self.queued) + 1 - CAPACITY
        over_bytes = sum(self.sizes.values()) + incoming - QUEUE_BYTES
        out = []
        for seq in sorted(self.queued):
            if over_bytes > 0:
                over_bytes -= self.sizes[seq]
            elif not (over_count > 0 and self.ends[seq] < self.now - KEEP_MS):
                break
            over_count -= 1
            out.append(seq)
        return out

    def leave(self, seq: int) -> None:
        self.queued.remove(seq)
        del self.ends[seq], self.sizes[seq]

    # --- rules ----------------------------------------------------------------

    @rule(after=st.integers(0, 2 * KEEP_MS))
    def begin(self, after: int) -> None:
        self.now += after
        fields = {"start_ts": self.now, "end_ts": self.now, "duration_ms": 0}
        record = make_record(journal_id=self.j.journal_id, seq=self.last_seq + 1, **fields)
        size = len(record_json(record))
        evicting = self.expect_eviction(size)
        record = self.run(self.j.begin(record))
        assert record.seq == self.last_seq + 1, "sequences are 1, 2, 3, ... without reuse"
        self.last_seq = record.seq
        self.open[record.seq] = record
        self.sizes[record.seq] = size
        for seq in evicting:
            self.leave(seq)
            self.evicted.add(seq)

    @precondition(lambda self: self.open)
    @rule(data=st.data(), lasted=st.integers(0, 2 * KEEP_MS))
    def close(self, data: st.DataObject, lasted: int) -> None:
        seq = data.draw(st.sampled_from(sorted(self.open)))
        record = self.open.pop(seq)
        record.duration_ms, record.end_ts = lasted, record.start_ts + lasted
        sealed = seal(record)
        self.run(self.j.close(sealed))
        self.queued.append(seq)
        self.ends[seq], self.sizes[seq] = sealed.end_ts, len(record_json(sealed))

    @precondition(lambda self: self.queued)
    @rule(data=st.data())
    def final_ack(self, data: st.DataObject) -> None:
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.queued)), unique=True))
        # Acks may also name records that are not there (any more): nothing happens.
        stray = data.draw(st.lists(st.sampled_from(sorted(self.acked | self.evicted | {0}))))
        removed = self.run(self.j.remove(chosen + stray))
        assert removed == len(chosen)
        for seq in chosen:
            self.leave(seq)
            self.acked.add(seq)

    @rule()
    def reopen(self) -> None:
        """A restart: plays that were open come back sealed as device_restart."""
        self.run(self.j.aclose())
        self.journal = self.open_()
        self.recovered()

    def recovered(self) -> None:
        """Plays left open come back sealed, ending at their last checkpoint (their start)."""
        assert {r.seq for r in self.j.recovered} == set(self.open)
        assert all(r.end_reason == "device_restart" for r in self.j.recovered)
        for record in self.j.recovered:
            self.ends[record.seq], self.sizes[record.seq] = record.end_ts, len(record_json(record))
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

    @invariant()
    def the_queued_bytes_are_counted_exactly(self) -> None:
        if self.journal is None:
            return
        assert self.j.queue_bytes == sum(self.sizes.values())


JournalMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_journal_invariants = JournalMachine.TestCase
