"""The reconciliation oracle: what every device recorded, against what the service holds.

For each record in a device's ledger, keyed (device, journal, seq) with its
checksum, the first that applies:

- **accepted** (valid or partial, as the service stored it): the service's
  `impressions` hold the key with that checksum. A record the device saw
  answered `duplicate` also counts under *duplicates absorbed*.
- **rejected** (by the service's reason): its `rejects` hold the key with that
  checksum.
- **queued**: the device still holds it, waiting for a final ack.
- **evicted**: the device dropped it for lack of space and reported the range;
  a loss, but a known and reported one, shown apart (it does not fail a run).
- **lost**: anything else. Plays still open on a stopped device count as *open*.

Counted twice: an impression no ledger has (a *phantom*; also any impression
under a journal no device folder holds), a key both accepted and rejected with
the same checksum, a `duplicate` ack for a record the service does not hold, or
one play (same start and content) recorded under two sequences. Impressions at
or below a ledger's floor (pruned by its retention) are outside the window.
Device-side outcomes are cross-checked with the service's state; differences
are reported as mismatches. Verification is accounted for too (`accounting.py`):
every valid play held is verified, failed, or pending with a reason to wait.
The run fails when anything is lost or counted twice, when a journal cannot be
read, or when a valid play is stuck in verification (or outside it).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from playproof.device.journal import JOURNAL_FILE
from playproof.device.ledger import EVICTED, LedgerRow, LedgerView, read_ledger
from playproof.errors import JournalError
from playproof.fleet.accounting import Requirements, Verification, Waits, account, rows_of
from playproof.stores.base import Store

GROUP: Final = 500  # devices per read of the service
KEEP_FINDINGS: Final = 1000
DOUBLE: Final = ("phantom", "unknown_journal", "accepted_and_rejected", "false_duplicate")
TWO_SEQUENCES: Final = "two_sequences"


@dataclass
class Tally:
    """One device's (or the fleet's) records, by what became of them."""

    recorded: int = 0
    valid: int = 0
    partial: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    queued: int = 0
    open: int = 0
    evicted: int = 0
    lost: int = 0
    double: int = 0
    mismatched: int = 0
    outside: int = 0

    def add(self, other: Tally) -> None:
        """Add another tally into this one."""
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.rejected.update(other.rejected)

    @property
    def accepted(self) -> int:
        """Valid and partial."""
        return self.valid + self.partial

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        out: dict[str, Any] = {name: getattr(self, name) for name in _COUNTS}
        out["accepted"] = self.accepted
        out["rejected"] = dict(sorted(self.rejected.items()))
        return out


_COUNTS: Final = (
    "recorded",
    "valid",
    "partial",
    "duplicates",
    "queued",
    "open",
    "evicted",
    "lost",
    "double",
    "mismatched",
    "outside",
)


@dataclass(frozen=True)
class Finding:
    """One record (or impression) that did not add up, and why."""

    device_id: str
    journal_id: str | None
    seq: int | None
    kind: str
    detail: str


@dataclass
class Reconciliation:
    """The fleet's reconciliation: per device, in total, and what did not add up."""

    devices: dict[str, Tally] = field(default_factory=dict)
    total: Tally = field(default_factory=Tally)
    findings: list[Finding] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    verification: Verification = field(default_factory=Verification)
    journals: int = 0
    rows: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing counted twice, every journal read, no valid play stuck."""
        lost_or_twice = self.total.lost or self.total.double
        return not lost_or_twice and not self.errors and self.verification.ok

    @property
    def rows_per_s(self) -> float:
        """Ledger rows and service rows compared per second."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def note(self, finding: Finding) -> None:
        """Keep a finding (the first KEEP_FINDINGS of them; all are counted)."""
        if len(self.findings) < KEEP_FINDINGS:
            self.findings.append(finding)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "ok": self.ok,
            "total": self.total.as_dict(),
            "devices": {d: t.as_dict() for d, t in sorted(self.devices.items())},
            "findings": [f.__dict__ for f in self.findings],
            "errors": self.errors,
            "verification": self.verification.as_dict(),
            "journals": self.journals,
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.rows_per_s),
        }


# --- reading ----------------------------------------------------------------------


def journal_files(devices_dir: Path) -> list[Path]:
    """Every device's journal under `devices_dir` (one folder per device)."""
    return sorted(devices_dir.glob(f"*/{JOURNAL_FILE}"))


def read_ledgers(paths: Sequence[Path], threads: int = 4) -> tuple[list[LedgerView], list[str]]:
    """Read many stopped devices' ledgers at once; the views and what could not be read."""
    views: list[LedgerView] = []
    errors: list[str] = []
    with ThreadPoolExecutor(threads) as pool:
        for found in pool.map(_read_one, paths):
            (views if isinstance(found, LedgerView) else errors).append(found)  # type: ignore[arg-type]
    return views, errors


def _read_one(path: Path) -> LedgerView | str:
    try:
        return read_ledger(path)
    except JournalError as exc:
        return str(exc)


# --- comparing --------------------------------------------------------------------


async def reconcile(
    store: Store,
    views: Sequence[LedgerView],
    errors: Iterable[str] = (),
    waits: Waits | None = None,
) -> Reconciliation:
    """Compare the devices' ledgers with what the service holds of those devices.

    With `waits` (the service's clock now, and its settle and grace times), a valid
    play pending with nothing to wait for fails the run; without, pending is counted.
    """
    started = time.perf_counter()
    result = Reconciliation(errors=list(errors), journals=len(views))
    needs = await Requirements.load(store)

    def note(device_id: str, journal_id: str, seq: int, kind: str, detail: str) -> None:
        result.note(Finding(device_id, journal_id, seq, kind, detail))

    by_device: dict[str, list[LedgerView]] = defaultdict(list)
    for view in views:
        by_device[view.device_id].append(view)
    devices = sorted(by_device)
    for i in range(0, len(devices), GROUP):
        group = devices[i : i + GROUP]
        held = await store.held_records(group)
        impressions = _by_device(held.impressions)
        rejects = _by_device(held.rejects)
        result.rows += len(held.impressions) + len(held.rejects)
        for device_id in group:
            _compare(
                result, device_id, by_device[device_id], impressions[device_id], rejects[device_id]
            )
        account(result.verification, await rows_of(store, group), needs, waits, note)
    result.seconds = time.perf_counter() - started
    return result


async def reconcile_folder(
    store: Store, devices_dir: Path, waits: Waits | None = None
) -> Reconciliation:
    """Reconcile every device whose folder is under `devices_dir` (devices stopped)."""
    started = time.perf_counter()
    views, errors = await asyncio.to_thread(read_ledgers, journal_files(devices_dir))
    result = await reconcile(store, views, errors, waits)
    result.seconds = time.perf_counter() - started
    return result


def _by_device(rows: Iterable[tuple[Any, ...]]) -> defaultdict[str, list[tuple[Any, ...]]]:
    grouped: defaultdict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in rows:
        if row[0] is not None:
            grouped[row[0]].append(row)
    return grouped


def _compare(
    result: Reconciliation,
    device_id: str,
    views: list[LedgerView],
    impressions: list[tuple[Any, ...]],
    rejects: list[tuple[Any, ...]],
) -> None:
    check = _DeviceCheck(result, device_id, impressions, rejects)
    for view in views:
        check.ledger(view)
    check.unmatched({v.journal_id: v for v in views})
    check.same_play_twice(views)
    result.devices[device_id] = check.tally
    result.total.add(check.tally)


class _DeviceCheck:
    """One device's ledgers against the service's rows for it."""

    def __init__(
        self,
        result: Reconciliation,
        device_id: str,
        impressions: list[tuple[Any, ...]],
        rejects: list[tuple[Any, ...]],
    ) -> None:
        self.result = result
        self.device_id = device_id
        self.tally = Tally()
        # (journal, seq) -> (checksum, status); (journal, seq, checksum) -> reasons
        self.held = {(r[1], r[2]): (r[3], r[4]) for r in impressions}
        self.rejects: defaultdict[tuple[Any, ...], list[str]] = defaultdict(list)
        for r in rejects:
            self.rejects[(r[1], r[2], r[3])].append(r[4])
        self.matched: set[tuple[str, int]] = set()

    def finding(self, journal_id: str | None, seq: int | None, kind: str, detail: str) -> None:
        """Note one record that did not add up."""
        self.result.note(Finding(self.device_id, journal_id, seq, kind, detail))

    def ledger(self, view: LedgerView) -> None:
        """Check every row of one journal's ledger."""
        self.tally.open += len(view.open_seqs)
        self.tally.recorded += len(view.open_seqs) + len(view.rows)
        self.result.rows += len(view.rows)
        for row in view.rows:
            self.row(view.journal_id, row)

    def row(self, journal_id: str, row: LedgerRow) -> None:
        """Classify one ledger row by what the service holds."""
        held = self.held.get((journal_id, row.seq))
        reasons = self.rejects.get((journal_id, row.seq, row.checksum), [])
        if held is not None and held[0] == row.checksum:
            self.accepted(journal_id, row, held[1], reasons)
        elif reasons:
            self.rejected(journal_id, row, reasons)
        elif row.outcome is None:
            self.tally.queued += 1
        elif row.outcome == EVICTED:
            self.tally.evicted += 1
        else:
            self.lost(journal_id, row)

    def accepted(self, journal_id: str, row: LedgerRow, status: str, reasons: list[str]) -> None:
        """The service holds the record: valid or partial (and what else it says)."""
        self.matched.add((journal_id, row.seq))
        if status == "valid":
            self.tally.valid += 1
        else:
            self.tally.partial += 1
        if row.outcome == "duplicate":
            self.tally.duplicates += 1
        if reasons:
            self.tally.double += 1
            self.finding(
                journal_id, row.seq, "accepted_and_rejected", f"also rejected as {reasons}"
            )
        said = row.outcome or ""
        if said.startswith("rejected:") or (
            said.startswith("accepted:") and said != f"accepted:{status}"
        ):
            self.mismatch(journal_id, row, f"the service holds it as {status}")

    def rejected(self, journal_id: str, row: LedgerRow, reasons: list[str]) -> None:
        """The service rejected the record: by which reason."""
        said = row.outcome or ""
        reason = (
            said.removeprefix("rejected:")
            if said.removeprefix("rejected:") in reasons
            else reasons[-1]
        )
        self.tally.rejected[reason] += 1
        if said and said != f"rejected:{reason}" and said != EVICTED:
            self.mismatch(journal_id, row, f"the service rejected it as {reasons}")

    def lost(self, journal_id: str, row: LedgerRow) -> None:
        """Neither held nor queued nor evicted: lost."""
        self.tally.lost += 1
        self.finding(
            journal_id, row.seq, "lost", f"answered {row.outcome}, the service holds nothing"
        )
        if row.outcome == "duplicate":
            self.tally.double += 1
            self.finding(journal_id, row.seq, "false_duplicate", "a duplicate of nothing held")

    def mismatch(self, journal_id: str, row: LedgerRow, detail: str) -> None:
        """What the device noted differs from the service's state."""
        self.tally.mismatched += 1
        self.finding(journal_id, row.seq, "mismatch", f"the device noted {row.outcome}; {detail}")

    def unmatched(self, journals: dict[str, LedgerView]) -> None:
        """Impressions no ledger row explains: phantoms, unknown journals, or pruned."""
        self.result.rows += len(self.held)
        for (journal_id, seq), (checksum, _) in self.held.items():
            if (journal_id, seq) in self.matched:
                continue
            view = journals.get(journal_id)
            if view is not None and seq <= view.floor:
                self.tally.outside += 1
                continue
            kind = "phantom" if view is not None else "unknown_journal"
            self.tally.double += 1
            self.finding(
                journal_id, seq, kind, f"an impression ({checksum[:12]}) no ledger recorded"
            )

    def same_play_twice(self, views: list[LedgerView]) -> None:
        """One play (start and content) recorded under two sequences."""
        plays: Counter[tuple[int, str]] = Counter()
        for view in views:
            plays.update((row.start_ts, row.content_id) for row in view.rows)
        for (start_ts, content_id), times in plays.items():
            if times > 1:
                self.tally.double += times - 1
                detail = f"the play of {content_id} at {start_ts} recorded {times} times"
                self.finding(None, None, TWO_SEQUENCES, detail)
