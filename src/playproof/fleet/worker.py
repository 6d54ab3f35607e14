"""A worker process: one event loop running a share of the fleet's screens.

The simulator starts a few of these (file descriptors, not CPU, usually decide
how many: a screen holds about four). A worker receives its plan over a pipe,
runs its screens until the run's simulated end or until the parent says
`stop` (or `abort`: no drain), reports progress every second, then stops every
player, gives the network back, lets the screens deliver within the drain
time, closes them and sends its last report. It ignores SIGINT: the parent
decides, so that Ctrl-C drains rather than kills. A closed pipe (the parent
died) aborts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import uvloop

from playproof.device.blocking import run_inline
from playproof.fleet.ntp import SimNtpServer
from playproof.fleet.plan import FleetOptions, ScreenPlan
from playproof.fleet.progress import Progress, Sampler, measure_lag
from playproof.fleet.screen import Context, Screen, ScreenFilter
from playproof.fleet.simclock import SimClock

log = logging.getLogger(__name__)

REPORT_EVERY_S = 1.0
SETTLE_S = 5.0  # after the last screen started, before its objects are frozen


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a worker needs, sent over its pipe."""

    index: int
    server_url: str
    clock: SimClock
    run_start_ms: int
    options: FleetOptions
    screens: tuple[ScreenPlan, ...]
    tokens: dict[str, str]
    log_file: Path


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def main(conn: Connection) -> None:
    """The worker process: receive the plan, run it, send the last report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    plan: WorkerPlan = conn.recv()
    handler = logging.FileHandler(plan.log_file)
    handler.addFilter(ScreenFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(screen)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    raise_fd_limit()
    try:
        uvloop.run(Worker(plan, conn).run())
    finally:
        conn.close()


class Worker:
    """Runs its screens and reports on them."""

    def __init__(self, plan: WorkerPlan, conn: Connection) -> None:
        self.plan = plan
        self.conn = conn
        self.stop = asyncio.Event()
        self.drain_s = plan.options.drain_s
        self.abort = asyncio.Event()
        self.phase = "starting"
        self.lag = Sampler()
        self.round_trips = Sampler()
        self.screens: list[Screen] = []

    async def run(self) -> None:
        """Run until the simulated end or the parent's word, drain, report, return."""
        plan = self.plan
        loop = asyncio.get_running_loop()
        loop.add_reader(self.conn.fileno(), self._on_message)
        ntp = await SimNtpServer(plan.clock).start() if plan.options.ntp else None
        ctx = Context(
            plan.clock,
            plan.server_url,
            plan.options,
            plan.run_start_ms,
            ntp.address if ntp else None,
            self._round_trip,
        )
        self.screens = [Screen(s, plan.tokens[s.device_id], ctx) for s in plan.screens]
        helpers = [
            asyncio.create_task(measure_lag(self.lag)),
            asyncio.create_task(self._report()),
            asyncio.create_task(self._after_ramp()),
        ]
        try:
            await self._lifetime()
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            loop.remove_reader(self.conn.fileno())
            if ntp is not None:
                ntp.close()
        self.phase = "done"
        self._send(self.progress())

    async def _lifetime(self) -> None:
        self.phase = "running"
        lives = [asyncio.create_task(s.live(self.stop)) for s in self.screens]
        end_ms = self.plan.run_start_ms + self.plan.options.duration_ms
        clock = self.plan.clock
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), clock.real_seconds(end_ms - clock.now_ms()))
        self.stop.set()
        self.phase = "stopping"
        await asyncio.gather(*lives, return_exceptions=True)
        self.phase = "draining"
        await asyncio.gather(
            *(s.finish(self.drain_s, self.abort) for s in self.screens),
            return_exceptions=True,
        )

    async def _after_ramp(self) -> None:
        """Once every screen has started: settle memory, and go inline with fast journals.

        Thousands of screens are millions of long-lived objects: a full collection
        over them stalls the event loop for hundreds of milliseconds, again and
        again. Frozen, they are never scanned; the young ones still are. Fast
        journals run their SQLite calls on the loop's thread only from now on:
        opening a journal (files created, a reserve written and synced) stays on
        the pool.
        """
        gc.disable()  # during the ramp: the same stalls, for nothing
        last = max((s.start_ms for s in self.plan.screens), default=0)
        try:
            await asyncio.sleep(self.screens[0].until(last) + SETTLE_S if self.screens else 0)
        finally:
            gc.collect()
            gc.freeze()
            gc.enable()
        if self.plan.options.fast_journals:
            run_inline(True)

    def _on_message(self) -> None:
        try:
            message = self.conn.recv()
        except (EOFError, OSError):
            message = "abort"  # the parent is gone
            asyncio.get_running_loop().remove_reader(self.conn.fileno())
        if message == "abort":
            self.drain_s = 0.0
            self.abort.set()
        if message in ("stop", "abort"):
            self.stop.set()

    def _round_trip(self, seconds: float) -> None:
        self.round_trips.add(seconds * 1000.0)

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY_S)
            self._send(self.progress())

    def _send(self, progress: Progress) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(progress)

    def progress(self) -> Progress:
        """This worker's screens now."""
        clock = self.plan.clock
        report = Progress(
            worker=self.plan.index,
            phase=self.phase,
            sim_now_ms=clock.now_ms(),
            real_now=time.time(),
            screens=len(self.screens),
            lag_ms=self.lag.take(),
            round_trip_ms=self.round_trips.take(),
        )
        acks: dict[str, int] = {}
        rejected: dict[str, int] = {}
        for screen in self.screens:
            _count(report, screen)
            screen_acks, screen_rejected = screen.tally()
            for name, n in screen_acks.items():
                acks[name] = acks.get(name, 0) + n
            for name, n in screen_rejected.items():
                rejected[name] = rejected.get(name, 0) + n
        report.acks, report.rejected = acks, rejected
        return report


def _count(report: Progress, screen: Screen) -> None:
    report.started += screen.started
    report.connected += screen.connected()
    report.offline += screen.offline
    report.down += screen.down
    report.failed += screen.failed is not None
    report.recorded += screen.recorded
    report.unrecorded += screen.unrecorded
    report.crashes += screen.crashes
    report.cuts += screen.cuts
    report.steps += screen.steps
    report.queued += screen.queued()
