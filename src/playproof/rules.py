"""Pure policy (no I/O): playback, clock, staleness, flags, quality, and sequence gaps.

The service applies these to every record; a device may apply them too, to tell
early what the service will answer. Every threshold lives in `Policy`, whose
defaults are PROTOCOL.md's values.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Final, NamedTuple

import msgspec

from playproof.protocol import InvalidRecord, Record, checksum_ok

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 60 * MINUTE_MS
# The longest play the rollups count (stores clamp each play's duration to it, and
# migration 0003 did the same to what was stored before): a sum of plays can then
# never overflow a 64-bit column. A policy may lower the bound on durations, never
# raise it past this, or reports would count less than the rows hold.
DURATION_CEILING_MS: Final = 24 * HOUR_MS
# 2000-01-01T00:00:00Z and 2100-01-01T00:00:00Z: no real play lies outside them.
EARLIEST_TS_MS: Final = 946_684_800_000
LATEST_TS_MS: Final = 4_102_444_800_000

FLAG_CLOCK_SKEW: Final = "clock_skew"
FLAG_CLOCK_UNSYNCED: Final = "clock_unsynced"
FLAG_DURATION_MISMATCH: Final = "duration_mismatch"
FLAG_OVERLONG: Final = "overlong"
FLAG_STORE_MISMATCH: Final = "store_mismatch"
# Version 2 (PROTOCOL.md section 7): the panel was seen off (the play is `partial`),
# or nobody could tell.
FLAG_PANEL_OFF: Final = "panel_off"
FLAG_PANEL_UNKNOWN: Final = "panel_unknown"
FLAGS: Final = (
    FLAG_CLOCK_SKEW,
    FLAG_CLOCK_UNSYNCED,
    FLAG_DURATION_MISMATCH,
    FLAG_OVERLONG,
    FLAG_STORE_MISMATCH,
    FLAG_PANEL_OFF,
    FLAG_PANEL_UNKNOWN,
)
# Panel states under which the play was not seen.
PANEL_NOT_SEEN: Final = frozenset(("off", "standby", "no_signal"))

BAD_SIGNATURE: Final = "bad_signature"
# Rejects whose key (device, journal, seq) cannot be trusted: a forbidden record
# names another device, a bad checksum makes the key itself doubtful, and a bad
# signature means the device may not have written it. They never move anyone's
# sequence state nor hold a sequence place.
UNTRUSTED_KEY_REASONS: Final = ("forbidden", "bad_checksum", BAD_SIGNATURE)


def key_trusted(verdict_reason: str | None) -> bool:
    """Whether a record with this verdict may move its journal's sequence state."""
    return verdict_reason not in UNTRUSTED_KEY_REASONS


def dedupe_first(verdict_reason: str | None) -> bool:
    """Whether a record with this verdict is answered `duplicate` when its key is stored
    with its checksum: every verdict but those before dedupe in PROTOCOL.md's order
    (`bad_checksum`, `forbidden`; a bad signature comes after, so a resend after its key's
    revocation is still a duplicate)."""
    return verdict_reason not in ("forbidden", "bad_checksum")


class Policy(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Every threshold of the rules; the defaults are PROTOCOL.md's."""

    # Percentages are integers so that "exactly 80 %" is decided exactly.
    valid_percent: int = 80
    skew_flag_ms: int = 10 * MINUTE_MS
    skew_reject_ms: int = 30 * MINUTE_MS
    future_tolerance_ms: int = 1_000
    offline_limit_ms: int = 4 * HOUR_MS
    sync_max_age_ms: int = HOUR_MS
    duration_tolerance_ms: int = 2_000
    overlong_percent: int = 150
    penalty_clock_skew: int = 30
    penalty_clock_unsynced: int = 20
    penalty_duration_mismatch: int = 20
    penalty_overlong: int = 10
    penalty_store_mismatch: int = 20
    # A panel seen off makes the play `partial` anyway; its quality says so too.
    penalty_panel_off: int = 100
    penalty_panel_unknown: int = 20
    # Verification: how long a required screenshot a record names may take to arrive
    # (from the record's received_at), and how many bits of perceptual hash a
    # screenshot may differ from its content's reference images.
    screenshot_grace_ms: int = HOUR_MS
    match_threshold: int = 10
    # Bounds past which a record is `invalid`: duration_ms and expected_ms at most
    # max_duration_ms; start_ts and end_ts within [min_timestamp_ms, max_timestamp_ms].
    max_duration_ms: int = DURATION_CEILING_MS
    min_timestamp_ms: int = EARLIEST_TS_MS
    max_timestamp_ms: int = LATEST_TS_MS
    # Open sequence gaps one journal may hold. Past it, a new gap is merged into the
    # journal's last one and a gap is no longer split by an arrival inside it, so the
    # work of a commit stays bounded whatever a device sends; the journal is then
    # `suspect`: its ranges may hold sequences that did arrive (missing and lost
    # counts are upper bounds).
    max_open_gaps: int = 1000

    def __post_init__(self) -> None:
        """Refuse thresholds that make the rules meaningless."""
        if not 0 < self.valid_percent <= 100:
            raise ValueError(f"valid_percent must be in 1..100, got {self.valid_percent}")
        if not 0 < self.max_duration_ms <= DURATION_CEILING_MS:
            raise ValueError(
                f"max_duration_ms must be in 1..{DURATION_CEILING_MS} (24 h, what the "
                f"rollups count of one play), got {self.max_duration_ms}"
            )
        if self.max_open_gaps < 1:
            raise ValueError(f"max_open_gaps must be at least 1, got {self.max_open_gaps}")
        if not self.min_timestamp_ms < self.max_timestamp_ms:
            raise ValueError(
                f"need min_timestamp_ms < max_timestamp_ms, got "
                f"{self.min_timestamp_ms} and {self.max_timestamp_ms}"
            )
        if not 0 <= self.skew_flag_ms <= self.skew_reject_ms:
            raise ValueError(
                f"need 0 <= skew_flag_ms <= skew_reject_ms, got "
                f"{self.skew_flag_ms} and {self.skew_reject_ms}"
            )
        for name in self.__struct_fields__:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


DEFAULT_POLICY: Final = Policy()


class Context(NamedTuple):
    """What a batch tells about every record in it."""

    device_id: str
    store_id: str | None
    sent_at: int
    received_at: int

    @property
    def skew_ms(self) -> int:
        """`sent_at - received_at`, as PROTOCOL.md defines skew."""
        return self.sent_at - self.received_at


class Verdict(NamedTuple):
    """What the rules say of one record, before dedupe."""

    reason: str | None
    status: str | None = None
    quality: int = 0
    flags: tuple[str, ...] = ()
    # What exactly was wrong, kept with the reject for audit ("" when the reason says it all).
    detail: str = ""

    @property
    def accepted(self) -> bool:
        """Whether the record passes the rules."""
        return self.reason is None


def reject(reason: str, detail: str = "") -> Verdict:
    """A verdict that rejects with `reason`, and what exactly was wrong."""
    return Verdict(reason, detail=detail)


def play_status(record: Record, policy: Policy = DEFAULT_POLICY) -> str:
    """`valid` when completed and played at least `valid_percent` of expected (and, in
    version 2, with the panel not seen off), else `partial`."""
    enough = record.duration_ms * 100 >= policy.valid_percent * record.expected_ms
    seen = record.panel_state not in PANEL_NOT_SEEN
    return "valid" if record.end_reason == "completed" and enough and seen else "partial"


def skew_band(skew_ms: int, policy: Policy = DEFAULT_POLICY) -> str:
    """`ok`, `flag` or `reject` for a batch's skew, by the clock table."""
    size = abs(skew_ms)
    if size <= policy.skew_flag_ms:
        return "ok"
    return "flag" if size <= policy.skew_reject_ms else "reject"


def flags_for(record: Record, ctx: Context, policy: Policy = DEFAULT_POLICY) -> tuple[str, ...]:
    """The quality flags a record earns; see the README for the service's policy."""
    return Judge(ctx, policy).flags(record)


def quality(flags: tuple[str, ...], policy: Policy = DEFAULT_POLICY) -> int:
    """100 less the penalty of every flag, never below 0."""
    penalty: int = sum(getattr(policy, f"penalty_{flag}") for flag in flags)
    return max(0, 100 - penalty)


class Judge:
    """The rules bound to one batch's context, so that each record costs a few comparisons.

    A batch shares `sent_at`, `received_at` and the device, so the clock band,
    the future and stale limits and the verdicts themselves are worked out
    once; a service judging a thousand records a batch spends its time here.
    """

    def __init__(self, ctx: Context, policy: Policy = DEFAULT_POLICY) -> None:
        self.ctx = ctx
        self.policy = policy
        band = skew_band(ctx.skew_ms, policy)
        self._skew_rejected = band == "reject"
        self._skew_flags: tuple[str, ...] = (FLAG_CLOCK_SKEW,) if band == "flag" else ()
        self._future_after = ctx.sent_at + policy.future_tolerance_ms
        self._stale_before = ctx.sent_at - policy.offline_limit_ms
        self._earliest, self._latest = policy.min_timestamp_ms, policy.max_timestamp_ms
        self._longest = policy.max_duration_ms
        self._verdicts: dict[tuple[str, tuple[str, ...]], Verdict] = {}

    def flags(self, record: Record) -> tuple[str, ...]:
        """The quality flags a record earns in this batch."""
        policy = self.policy
        flags = self._skew_flags
        if not record.clock_synced:
            flags += (FLAG_CLOCK_UNSYNCED,)
        wall = record.end_ts - record.start_ts
        if abs(wall - record.duration_ms) > policy.duration_tolerance_ms:
            flags += (FLAG_DURATION_MISMATCH,)
        if record.duration_ms * 100 > policy.overlong_percent * record.expected_ms:
            flags += (FLAG_OVERLONG,)
        if self.ctx.store_id is not None and record.store_id != self.ctx.store_id:
            flags += (FLAG_STORE_MISMATCH,)
        if record.v != 1:
            if record.panel_state in PANEL_NOT_SEEN:
                flags += (FLAG_PANEL_OFF,)
            elif record.panel_state == "unknown":
                flags += (FLAG_PANEL_UNKNOWN,)
        return flags

    def __call__(self, record: Record) -> Verdict:
        """Apply PROTOCOL.md section 5 to one record whose checksum has been verified."""
        if record.device_id != self.ctx.device_id:
            return reject("forbidden")
        # One chained test on the hot path; the details are worked out only for the few
        # records that fail it.
        if not (
            self._earliest <= record.start_ts <= record.end_ts <= self._latest
            and record.duration_ms <= self._longest
            and record.expected_ms <= self._longest
        ):
            return self._invalid(record)
        if self._skew_rejected:
            return reject("clock_skew")
        if record.end_ts > self._future_after:
            return reject("future_timestamp")
        if record.end_ts < self._stale_before:
            return reject("stale")
        key = (play_status(record, self.policy), self.flags(record))
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._verdicts[key] = Verdict(
                None, key[0], quality(key[1], self.policy), key[1]
            )
        return verdict

    def _invalid(self, record: Record) -> Verdict:
        """`invalid`, saying which value is out of range, or that the play ends before it starts."""
        longest, earliest, latest = self._longest, self._earliest, self._latest
        for name in ("duration_ms", "expected_ms"):
            value = getattr(record, name)
            if value > longest:
                return reject("invalid", f"expected {name} of at most {longest}, got {value}")
        for name in ("start_ts", "end_ts"):
            value = getattr(record, name)
            if not earliest <= value <= latest:
                return reject(
                    "invalid", f"expected {name} between {earliest} and {latest}, got {value}"
                )
        return reject(
            "invalid",
            f"expected start_ts at most end_ts, got {record.start_ts} > {record.end_ts}",
        )


def judge(record: Record, ctx: Context, policy: Policy = DEFAULT_POLICY) -> Verdict:
    """Apply PROTOCOL.md section 5 to one record whose checksum has been verified."""
    return Judge(ctx, policy)(record)


def judge_item(item: Record | InvalidRecord, rules: Judge) -> Verdict:
    """The verdict on one decoded item: undecodable, then its checksum, then the rules."""
    if isinstance(item, InvalidRecord):
        return reject("invalid")
    if not checksum_ok(item):
        return reject("bad_checksum")
    return rules(item)


# --- sequence gaps ---------------------------------------------------------


class Gap(NamedTuple):
    """Sequences `first..last` not yet received; `*_ts` are the neighbours' end times."""

    first: int
    last: int
    before_ts: int
    after_ts: int


class SequenceState(NamedTuple):
    """Per (device, journal): the highest sequence seen, its end time, and open gaps.

    `gaps` may be only some of the journal's gaps (sorted by `first`): those the
    arrivals at hand can fill, and its last one when a new gap may open.
    `gap_count` counts all of them, loaded or not; `suspect` says that the cap
    merged gaps, so that the ranges may hold sequences that did arrive.
    """

    high_water: int
    high_water_ts: int
    gaps: tuple[Gap, ...]
    gap_count: int = 0
    suspect: bool = False


class SequenceChange(NamedTuple):
    """What `advance` did: the new state, and the gaps closed and opened (for the store)."""

    state: SequenceState
    closed: tuple[Gap, ...]
    opened: tuple[Gap, ...]


def _split(gap: Gap, seq: int, ts: int) -> list[Gap]:
    parts = []
    if gap.first < seq:
        parts.append(Gap(gap.first, seq - 1, gap.before_ts, ts))
    if seq < gap.last:
        parts.append(Gap(seq + 1, gap.last, ts, gap.after_ts))
    return parts


class _Gaps:
    """A journal's loaded gaps being moved by arrivals, counting all of its gaps."""

    def __init__(self, state: SequenceState, cap: int | None) -> None:
        self.gaps = list(state.gaps)
        self.count = max(state.gap_count, len(state.gaps))
        self.cap = cap
        self.merged = False

    def _full(self) -> bool:
        return self.cap is not None and self.count >= self.cap

    def open(self, gap: Gap) -> None:
        """A new gap above every other one, merged into the last one once at the cap."""
        if self._full() and self.gaps:
            last = self.gaps[-1]
            self.gaps[-1] = Gap(last.first, gap.last, last.before_ts, gap.after_ts)
            self.merged = True
        else:
            self.gaps.append(gap)
            self.count += 1

    def fill(self, seq: int, ts: int) -> None:
        """An arrival at or below the high-water mark: the gap holding it shrinks or splits."""
        i = bisect_right(self.gaps, seq, key=lambda g: g.first) - 1
        if i < 0 or self.gaps[i].last < seq:
            return
        parts = _split(self.gaps[i], seq, ts)
        if len(parts) == 2 and self._full():
            self.merged = True  # kept whole: splitting it would pass the cap
            return
        self.gaps[i : i + 1] = parts
        self.count += len(parts) - 1


def advance(
    state: SequenceState, arrivals: list[tuple[int, int]], max_open_gaps: int | None = None
) -> SequenceChange:
    """Apply arrivals `(seq, end_ts)`: raise the high-water mark, open and fill gaps.

    Exact for the gaps `state` holds, which must include every gap an arrival at
    or below the high-water mark falls in, and the journal's last gap when the
    cap may merge into it. With `max_open_gaps`, the journal never holds more
    gaps than that (see `Policy.max_open_gaps`).
    """
    moved = _Gaps(state, max_open_gaps)
    hw, hw_ts = state.high_water, state.high_water_ts
    for seq, ts in sorted(arrivals):
        if seq > hw:
            if seq > hw + 1:
                moved.open(Gap(hw + 1, seq - 1, hw_ts if hw else ts, ts))
            hw, hw_ts = seq, ts
        else:
            moved.fill(seq, ts)
    before, after = set(state.gaps), set(moved.gaps)
    closed = tuple(sorted(before - after))
    opened = tuple(sorted(after - before))
    # Once no gap is left, nothing is counted that arrived: the journal is exact again.
    suspect = (state.suspect or moved.merged) and moved.count > 0
    new = SequenceState(hw, hw_ts, tuple(moved.gaps), moved.count, suspect)
    return SequenceChange(new, closed, opened)


def is_lost(gap: Gap, now_ms: int, policy: Policy = DEFAULT_POLICY) -> bool:
    """A gap whose neighbours are both older than the offline limit will never be filled."""
    return now_ms - max(gap.before_ts, gap.after_ts) > policy.offline_limit_ms
