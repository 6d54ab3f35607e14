"""The ledger's invariants under any sequence of journal operations (hypothesis, stateful).

The journal machine of `test_journal_state.py` runs as it is, with its model;
this one adds acks that name their outcome, a short retention (so that pruning
happens on every reopen) and, after every step, the ledger's promises:

- a queued record is exactly a ledger row without an outcome, with the
  record's own checksum;
- every settled record's row says what its ack said, and every evicted one
  says `evicted`;
- open plays are not in the ledger; every other sequence above the floor is;
- the floor never passes an open play or a queued record, and never goes back.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule

from tests.device.test_journal_state import JournalMachine

OUTCOMES = ["accepted:valid", "accepted:partial", "duplicate", "rejected:stale", "rejected:invalid"]
# Records made by `make_record` end a second before they are made: a retention of
# a few milliseconds makes every reopen prune what is settled and old enough.
RETENTION_MS = 5


class LedgerMachine(JournalMachine):
    """The journal machine, with outcomes named, pruning, and the ledger checked."""

    def __init__(self) -> None:
        super().__init__()
        self.outcomes: dict[int, str] = {}
        self.floor = 0

    @initialize()
    def open_journal(self) -> None:
        self.journal = self.open_(retention_ms=RETENTION_MS)

    @rule()
    def reopen(self) -> None:
        """A restart (pruning the ledger): plays that were open come back sealed."""
        self.run(self.j.aclose())
        self.journal = self.open_(retention_ms=RETENTION_MS)
        self.recovered()

    @precondition(lambda self: self.queued)
    @rule(data=st.data())
    def named_final_ack(self, data: st.DataObject) -> None:
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.queued)), unique=True))
        named = [data.draw(st.sampled_from(OUTCOMES)) for _ in chosen]
        assert self.run(self.j.remove(chosen, named)) == len(chosen)
        for seq, outcome in zip(chosen, named, strict=True):
            self.leave(seq)
            self.acked.add(seq)
            self.outcomes[seq] = outcome

    def expected_outcome(self, seq: int) -> str | None:
        if seq in self.evicted:
            return "evicted"
        if seq in self.acked:
            return self.outcomes.get(seq, "final")  # the base machine's acks name none
        return None

    @invariant()
    def queued_records_are_the_rows_without_outcome_with_their_checksum(self) -> None:
        if self.journal is None:
            return
        view = self.run(self.j.ledger())
        waiting = {r.seq: r.checksum for r in view.rows if r.outcome is None}
        pending = self.run(self.j.pending(limit=10_000))
        assert waiting == {p.seq: json.loads(p.body)["checksum"] for p in pending}

    @invariant()
    def every_row_says_what_became_of_its_record(self) -> None:
        if self.journal is None:
            return
        view = self.run(self.j.ledger())
        for row in view.rows:
            assert row.outcome == self.expected_outcome(row.seq), row

    @invariant()
    def every_sealed_sequence_above_the_floor_is_in_the_ledger(self) -> None:
        if self.journal is None:
            return
        view = self.run(self.j.ledger())
        in_ledger = {r.seq for r in view.rows}
        assert not in_ledger & set(self.open)
        assert set(view.open_seqs) == set(self.open)
        above = set(range(view.floor + 1, self.last_seq + 1))
        assert above - set(self.open) == {s for s in in_ledger if s > view.floor}
        unsettled = set(self.open) | set(self.queued)
        assert all(view.floor < s for s in unsettled)
        assert view.floor >= self.floor, "the floor never goes back"
        self.floor = view.floor


LedgerMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_ledger_invariants = LedgerMachine.TestCase
