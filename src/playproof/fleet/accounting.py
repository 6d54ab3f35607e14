"""Verification accounting: every valid play the service holds is decided, or has a reason to wait.

The reconciliation proves that every play reached the service once; this proves
that every valid one then entered verification and came out of it, or is still
in it for a reason the verifier gives itself:

- **verified**, or **failed** (counted under each of its reasons);
- **pending**, and one of: *settling* (received less than the settle time ago:
  the verifier leaves a screen's latest plays until every earlier commit has
  landed), *screenshot* (its campaign requires a screenshot, the record names
  one, it is not uploaded yet and the grace since `received_at` has not run
  out), or *behind a screenshot* (stored after such a play on the same screen:
  a screen's plays are decided in stored order);
- anything else is **stuck**: pending with nothing to wait for. So is a valid
  play with no verification status at all (*unaccounted*), and a partial play
  with one (*partial judged*: partial plays are never verified).

Whether a play may wait depends on the service's clock and settings, given as
`Waits`; without them pending plays are counted, not judged. The rules are
restated here rather than taken from `playproof.verification`: an oracle that
reused the verifier's code could not catch the verifier's mistakes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from playproof.catalog import Campaign, index
from playproof.config import Limits
from playproof.rules import DEFAULT_POLICY
from playproof.stores.base import Store
from playproof.stores.queries import placeholder

VERIFIED: Final = "verified"
FAILED: Final = "failed"
PENDING: Final = "pending"
SETTLING: Final = "settling"
SCREENSHOT: Final = "screenshot"
BEHIND: Final = "behind_screenshot"
STUCK: Final = "stuck"
UNJUDGED: Final = "unjudged"
WAITS: Final = (SETTLING, SCREENSHOT, BEHIND)
POLL_S: Final = 0.25

_COLUMNS: Final = (
    "i.device_id, i.journal_id, i.seq, i.status, i.verification, i.verification_reasons, "
    "i.received_at, i.campaign_id, i.start_ts, i.screenshot_sha256, s.sha256 IS NOT NULL"
)
_FROM: Final = "FROM impressions i LEFT JOIN screenshots s ON s.sha256 = i.screenshot_sha256"


class Row(NamedTuple):
    """What the accounting needs of one impression (`uploaded`: its screenshot is)."""

    device_id: str
    journal_id: str
    seq: int
    status: str
    verification: str | None
    reasons: str | None
    received_at: int
    campaign_id: str
    start_ts: int
    screenshot_sha256: str | None
    uploaded: bool

    @classmethod
    def of(cls, raw: Sequence[Any]) -> Row:
        """From a query's row (the screenshot flag is 0/1 on SQLite, a bool on PostgreSQL)."""
        return cls._make([*raw[:10], bool(raw[10])])

    def order(self) -> tuple[int, str, int]:
        """The verifier's order on a screen: as stored."""
        return (self.received_at, self.journal_id, self.seq)


@dataclass(frozen=True)
class Waits:
    """What a pending play may wait for, on the service's clock (its defaults unless told)."""

    now_ms: int
    settle_ms: int = Limits().verify_settle_ms
    grace_ms: int = DEFAULT_POLICY.screenshot_grace_ms


@dataclass
class Verification:
    """The fleet's valid plays by verification status, failures by reason, waits by cause."""

    valid: int = 0
    verified: int = 0
    failed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    pending: Counter[str] = field(default_factory=Counter)
    unaccounted: int = 0
    partial_judged: int = 0

    @property
    def stuck(self) -> int:
        """Valid plays pending with nothing to wait for."""
        return self.pending[STUCK]

    @property
    def ok(self) -> bool:
        """Every valid play decided or waiting for a reason; no partial play judged."""
        return self.stuck == 0 and self.unaccounted == 0 and self.partial_judged == 0

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "ok": self.ok,
            "valid": self.valid,
            "verified": self.verified,
            "failed": self.failed,
            "pending": sum(self.pending.values()),
            "failed_by_reason": dict(sorted(self.reasons.items())),
            "pending_by_cause": dict(sorted(self.pending.items())),
            "unaccounted": self.unaccounted,
            "partial_judged": self.partial_judged,
        }


# A finding's sink: (device_id, journal_id, seq, kind, detail).
Note = Callable[[str, str, int, str, str], None]


class Requirements:
    """Which campaigns require a screenshot, from the catalog the service holds."""

    def __init__(self, active: dict[str, Campaign], retired: dict[str, tuple[Campaign, int]]):
        self.active = active
        self.retired = retired

    @classmethod
    async def load(cls, store: Store) -> Requirements:
        """The store's catalog now."""
        state = await store.load_catalog()
        return cls(index(state.catalog).campaigns, dict(state.retired))

    def screenshot(self, campaign_id: str, start_ts: int) -> bool:
        """Whether the play's campaign requires a screenshot (a retired one for plays before)."""
        campaign = self.active.get(campaign_id)
        if campaign is None and campaign_id in self.retired:
            retired, at = self.retired[campaign_id]
            campaign = retired if start_ts < at else None
        return campaign is not None and campaign.require_screenshot


# --- reading --------------------------------------------------------------------------


async def rows_of(store: Store, device_ids: Sequence[str]) -> list[Row]:
    """Every impression of these devices, with its verification and its screenshot's upload."""
    if not device_ids:
        return []
    marks = ", ".join([placeholder(store)] * len(device_ids))
    raw = await store.read_rows(
        f"SELECT {_COLUMNS} {_FROM} WHERE i.device_id IN ({marks})", tuple(device_ids)
    )
    return [Row.of(r) for r in raw]


async def pending_rows(store: Store) -> list[Row]:
    """Every impression still pending (few, once a run has drained)."""
    raw = await store.read_rows(f"SELECT {_COLUMNS} {_FROM} WHERE i.verification = 'pending'")
    return [Row.of(r) for r in raw]


# --- judging --------------------------------------------------------------------------


def causes(pending: Iterable[Row], needs: Requirements, waits: Waits) -> list[tuple[Row, str]]:
    """Each pending valid play with its reason to wait, or STUCK."""
    by_device: dict[str, list[Row]] = {}
    for row in pending:
        by_device.setdefault(row.device_id, []).append(row)
    found: list[tuple[Row, str]] = []
    for rows in by_device.values():
        blocked = False
        for row in sorted(rows, key=Row.order):
            cause = _cause(row, needs, waits, blocked)
            blocked = blocked or cause == SCREENSHOT
            found.append((row, cause))
    return found


def _cause(row: Row, needs: Requirements, waits: Waits, blocked: bool) -> str:
    if row.received_at > waits.now_ms - waits.settle_ms:
        return SETTLING
    if blocked:
        return BEHIND
    waiting = (
        row.screenshot_sha256 is not None
        and not row.uploaded
        and waits.now_ms < row.received_at + waits.grace_ms
        and needs.screenshot(row.campaign_id, row.start_ts)
    )
    return SCREENSHOT if waiting else STUCK


def account(
    tally: Verification,
    rows: Iterable[Row],
    needs: Requirements,
    waits: Waits | None,
    note: Note,
) -> None:
    """Add these impressions to the tally; note each that does not add up."""
    pending: list[Row] = []
    for row in rows:
        if row.status != "valid":
            if row.verification is not None:
                tally.partial_judged += 1
                note(*row[:3], "partial_judged", f"a {row.status} play marked {row.verification}")
            continue
        tally.valid += 1
        if row.verification == VERIFIED:
            tally.verified += 1
        elif row.verification == FAILED:
            tally.failed += 1
            tally.reasons.update(r for r in (row.reasons or "").split(",") if r)
        elif row.verification == PENDING:
            pending.append(row)
        else:
            tally.unaccounted += 1
            note(*row[:3], "unverified", f"a valid play with verification {row.verification!r}")
    if waits is None:
        tally.pending[UNJUDGED] += len(pending)
        return
    for row, cause in causes(pending, needs, waits):
        tally.pending[cause] += 1
        if cause == STUCK:
            note(*row[:3], "pending_stuck", f"pending, received at {row.received_at}, no wait")


async def settle(
    store: Store,
    device_ids: Collection[str],
    waits: Callable[[], Waits],
    timeout_s: float,
) -> int:
    """Give the verifier time to catch up: wait (at most `timeout_s`) until none of these
    devices' plays is pending with nothing to wait for; how many still are."""
    deadline = time.monotonic() + timeout_s
    while True:
        needs = await Requirements.load(store)
        mine = [r for r in await pending_rows(store) if r.device_id in device_ids]
        stuck = sum(1 for _, cause in causes(mine, needs, waits()) if cause == STUCK)
        if stuck == 0 or time.monotonic() >= deadline:
            return stuck
        await asyncio.sleep(POLL_S)


async def once_unknown(store: Store, campaign_id: str) -> dict[str, int]:
    """A campaign's plays that were once decided `unknown_campaign`, by their status now
    (a campaign imported late: they are decided again once it is booked)."""
    ph = placeholder(store)
    rows = await store.read_rows(
        "SELECT i.verification, COUNT(*) FROM impressions i WHERE i.campaign_id = "
        f"{ph} AND EXISTS (SELECT 1 FROM verification_log l WHERE l.device_id = i.device_id "
        "AND l.journal_id = i.journal_id AND l.seq = i.seq "
        f"AND l.reasons LIKE {ph}) GROUP BY i.verification",
        (campaign_id, "%unknown_campaign%"),
    )
    return {str(status): int(n) for status, n in rows}
