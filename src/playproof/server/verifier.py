"""The verifier: every valid play leaves `pending` as `verified` or `failed`, with its reasons.

It runs inside `playproof serve` (and alone as `playproof verify`). Each turn it
finds the screens with plays pending that were received more than the settle
time ago (so that every earlier commit for the screen has landed), and for
each decides its pending plays one after another in stored order
(`verification.decide_screen`); the decisions of several screens, up to SAVE_PLAYS,
are written with their log rows and the verification rollup in one transaction.
Screenshots named by those plays are fingerprinted first, off the event loop, once
per blob.

Crash-safe by construction: a decision is written only where the play is
still `pending` and only against the catalog version it was made with, so a
verifier killed at any point and restarted decides every play once; several
verifiers on PostgreSQL share the work by screen (stores/postgres_verdicts.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from playproof import imaging
from playproof.catalog import index
from playproof.config import Limits
from playproof.errors import StoreError, UnsupportedMedia
from playproof.rules import DEFAULT_POLICY, Policy
from playproof.server.metrics import Metrics
from playproof.stores import verification_queries as vq
from playproof.stores.base import Store
from playproof.stores.verdicts import CatalogState, Facts
from playproof.verification import Booked, Decision, Play, decide_screen

log = logging.getLogger(__name__)

IDLE_S: Final = 0.5
THROUGHPUT_WINDOW_S: Final = 60.0
SCREENS_PER_TURN: Final = 500
# Decisions a write transaction carries (several screens' when they have few plays each):
# more would save fsyncs, but hold SQLite's one writer longer in front of ingest's
# commits; at 200 the stream's ack p99 rose 4-7 ms, at 50 it did not (issue 17,
# bench/stream.py --mode paced with the verifier in serve).
SAVE_PLAYS: Final = 50

Verdict = tuple[Play, Decision]


class Verifier:
    """Decides pending plays, screen by screen, until stopped."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], int],
        policy: Policy = DEFAULT_POLICY,
        limits: Limits | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._policy = policy
        self._limits = limits or Limits()
        self._metrics = metrics
        self._state: CatalogState | None = None
        self._booked: Booked | None = None
        self._version = (0, 0)
        self._reload = False
        # (monotonic second, plays decided) of the last minute's turns: the throughput.
        self._recent: deque[tuple[float, int]] = deque()
        self._task: asyncio.Task[None] | None = None
        # Whether the last turn stopped at a bound (screens a turn, plays a screen).
        self._more = False

    def start(self) -> None:
        """Start verifying in the background."""
        self._task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        """Stop; a turn cut short leaves its undecided plays pending."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self) -> None:
        """Turn after turn, at once while turns stop at their bounds; otherwise the next
        turn begins half the settle time after the last began (IDLE_S at least when it
        decided nothing).

        The pause lets a screen's plays gather, and several screens' decisions share a
        write transaction (`_save`): a verifier turning as fast as plays settle wrote one
        for nearly every play (issue 17: at 1,000 screens × 1 play/s, about 330 µs of
        service CPU a play, more than ingest's own). A play is still decided within 1.5
        settle times of arriving.
        """
        loop = asyncio.get_running_loop()
        every_s = self._limits.verify_settle_ms / 2000
        while True:
            began = loop.time()
            try:
                decided = await self.turn()
            except StoreError as exc:
                log.warning("verifier: the store failed, trying again shortly: %s", exc)
                decided = 0
            if decided and self._more:
                continue
            rest = every_s - (loop.time() - began)
            await asyncio.sleep(max(rest, 0.0 if decided else IDLE_S))

    async def turn(self) -> int:
        """One pass over the screens with settled pending plays; how many plays were decided."""
        now = self._clock()
        watermark = now - self._limits.verify_settle_ms
        await self._refresh()
        screens = await vq.pending_screens(self._store, watermark, SCREENS_PER_TURN)
        self._more = len(screens) >= SCREENS_PER_TURN
        decided, group, grouped = 0, [], 0
        for device_id in screens:
            decisions = await self._decide(device_id, watermark, now)
            self._more |= len(decisions) >= self._limits.verify_batch
            if decisions:
                group.append(decisions)
                grouped += len(decisions)
            if grouped >= SAVE_PLAYS:
                decided += await self._save(group, now)
                group, grouped = [], 0
        decided += await self._save(group, now)
        self._count(decided)
        if self._metrics is not None:
            oldest = await vq.oldest_pending(self._store)
            self._metrics.verification_lag.set(0 if oldest is None else (now - oldest) / 1000)
        return decided

    def _count(self, decided: int) -> None:
        now = time.monotonic()
        self._recent.append((now, decided))
        while self._recent and self._recent[0][0] < now - THROUGHPUT_WINDOW_S:
            self._recent.popleft()

    def throughput(self) -> float:
        """Plays this verifier decided a second, over the last minute."""
        return sum(n for _, n in self._recent) / THROUGHPUT_WINDOW_S

    async def drain(self) -> int:
        """Turns until a turn decides nothing (tests and `playproof verify --once`)."""
        total = 0
        while (decided := await self.turn()) > 0:
            total += decided
        return total

    async def _refresh(self) -> None:
        version = await vq.booking_version(self._store)
        if self._state is not None and self._version == version and not self._reload:
            return
        self._reload = False
        state = await self._store.load_catalog()
        references = await vq.references(self._store)
        self._state = state
        self._booked = Booked(index(state.catalog), state.retired, references)
        self._version = version

    async def _decide(self, device_id: str, watermark: int, now: int) -> list[Verdict]:
        """A screen's decisions, in stored order (written by `_save`)."""
        assert self._booked is not None
        batch = self._limits.verify_batch
        load = await self._store.load_screen(device_id, watermark, batch)
        if load.unfingerprinted:
            await self._fingerprint(load.unfingerprinted)
            load = await self._store.load_screen(device_id, watermark, batch)
        policy = self._policy
        return decide_screen(
            load.state, self._booked, now, policy.screenshot_grace_ms, policy.match_threshold
        )

    async def _save(self, group: list[list[Verdict]], now: int) -> int:
        """Write several screens' decisions in one transaction (one fsync for the lot, not
        one a screen); screen by screen when the store refuses the group. How many were
        written."""
        if not group:
            return 0
        assert self._state is not None
        together = [verdict for screen in group for verdict in screen]
        written = await self._store.save_decisions(together, now, self._state.version)
        if written is None and len(group) > 1:
            # Another verifier holds one of the screens (it decides those plays), or the
            # catalog changed: each screen alone, so that the others still go ahead.
            return sum([await self._save([screen], now) for screen in group])
        if written is None:
            # Nothing was written: read the catalog again next turn.
            self._reload = True
            return 0
        if self._metrics is not None:
            # Only what was written: a play another verifier decided meanwhile is its count.
            for status in written:
                self._metrics.verification_decisions.labels(status).inc()
        return len(written)

    async def _fingerprint(self, shas: list[str]) -> None:
        facts: list[Facts] = []
        for sha in shas:
            data = await asyncio.to_thread(self._store.blobs.read, sha)
            if data is None:
                continue  # recorded but not on disk: judged once it is
            try:
                found = await asyncio.to_thread(imaging.fingerprint, data)
            except UnsupportedMedia as exc:
                facts.append((sha, None, True, str(exc)))
            else:
                facts.append((sha, found.phash, found.blank, None))
        if facts:
            await self._store.save_screenshot_facts(facts)
