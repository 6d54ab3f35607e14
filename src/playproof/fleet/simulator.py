"""`playproof simulate`: a fleet of simulated screens against a running service, then the oracle.

1. The service's clock is read from its `/healthz`: a simulated clock is
   adopted as it is (speed, anchor, epoch), so fleet and service agree on time;
   asking for another speed than the service runs is an error.
2. The plan is drawn from the seed; every screen is registered (or its token,
   kept in its data folder, reused) through the admin API.
3. The catalog that books the fleet (`bookings.py`) is imported through the
   service with an operator token, and its reference images uploaded.
4. Worker processes run the screens (`worker.py`) while the view shows progress;
   Ctrl-C stops the fleet and drains it (a second Ctrl-C skips the drain). A
   campaign booked late (the demo's) is imported part-way through.
5. Once every screen is closed and the verifier has caught up (bounded), every
   ledger is reconciled with the service, verification included.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType

import httpx

from playproof.errors import ConfigError, PlayproofError
from playproof.fleet import accounting, bookings
from playproof.fleet import plan as planning
from playproof.fleet.accounting import Waits
from playproof.fleet.bookings import Bookings, Breaks
from playproof.fleet.live import View
from playproof.fleet.plan import FleetOptions, ScreenPlan
from playproof.fleet.pool import WorkerPool
from playproof.fleet.progress import Progress
from playproof.fleet.provision import add_operator, provision
from playproof.fleet.reconcile import Reconciliation, journal_files, reconcile_folder
from playproof.fleet.simclock import SimClock, from_info
from playproof.fleet.worker import WorkerPlan, raise_fd_limit
from playproof.server import admin

log = logging.getLogger(__name__)

LOG_FILE = "fleet.log"
POLL_S = 0.25
# The run starts this long after the plans leave, so that every worker starts on time.
LEAD_S = 2.0
# At the end, the longest the verifier gets (real seconds) to decide what has settled.
VERIFY_WAIT_S = 60.0


@dataclass
class RunResult:
    """What a simulation did and what the oracle says of it."""

    clock: SimClock
    run_start_ms: int
    progress: Progress
    reconciliation: Reconciliation
    interrupted: bool
    real_seconds: float
    log_file: Path
    breaks: Breaks = field(default_factory=Breaks)


def service_clock(server_url: str, speed: float | None = None) -> SimClock:
    """The service's clock from its /healthz; ConfigError unless it runs at `speed`."""
    try:
        answer = httpx.get(f"{server_url.rstrip('/')}/healthz", timeout=10.0)
    except httpx.HTTPError as exc:
        raise ConfigError(f"cannot reach the service at {server_url}: {exc}") from None
    if answer.status_code != 200:
        raise ConfigError(f"the service at {server_url} is not healthy: HTTP {answer.status_code}")
    clock = from_info(answer.json().get("clock") or {"mode": "real"})
    if speed is not None and abs(speed - clock.speed) > 1e-9:
        hint = "the real clock" if clock.speed == 1 else f"a {clock.speed:g}x simulated clock"
        raise ConfigError(
            f"expected the service on a {speed:g}x clock, but it runs on {hint}; "
            f"start it with `playproof serve --sim-clock {speed:g}` (or leave --speed out)"
        )
    return clock


class Interrupts:
    """Counts Ctrl-C presses while active, instead of raising KeyboardInterrupt."""

    def __init__(self) -> None:
        self.count = 0
        self._previous: object = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    def __enter__(self) -> Interrupts:
        """Take over SIGINT."""
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Give SIGINT back."""
        signal.signal(signal.SIGINT, self._previous)  # type: ignore[arg-type]


def worker_plans(
    server_url: str,
    clock: SimClock,
    options: FleetOptions,
    screens: list[ScreenPlan],
    tokens: dict[str, str],
) -> list[WorkerPlan]:
    """The screens dealt to as many workers as file descriptors require."""
    count = planning.workers_for(len(screens), raise_fd_limit(), options.workers)
    start = clock.now_ms() + round(clock.sim_ms(LEAD_S))
    return [
        WorkerPlan(
            index=i,
            server_url=server_url,
            clock=clock,
            run_start_ms=start,
            options=options,
            screens=tuple(screens[i::count]),
            tokens={s.device_id: tokens[s.device_id] for s in screens[i::count]},
            log_file=options.devices_dir / LOG_FILE,
        )
        for i in range(count)
    ]


@dataclass
class Chore:
    """Something to do once simulated time reaches `due_ms` (or at the end, if not done)."""

    due_ms: int
    action: Callable[[], object]
    done: bool = False

    def run(self) -> None:
        """Do it once; a failure is logged, the run goes on."""
        self.done = True
        try:
            self.action()
        except PlayproofError as exc:
            log.error("fleet: %s", exc)


def run(
    server_url: str,
    db_url: str,
    options: FleetOptions,
    view: Callable[[SimClock, int], View],
    speed: float | None = None,
    on_report: Callable[[Progress], None] | None = None,
    operator: str | None = None,
    on_booked: Callable[[Bookings], None] | None = None,
) -> RunResult:
    """Plan, provision, book, run the fleet with a view, drain, and reconcile.

    `operator` is an operator token to import the catalog with (by default one is
    registered); `on_booked` hears what was booked before the screens start.
    """
    clock = service_clock(server_url, speed)
    clock.warn("fleet")
    options.devices_dir.mkdir(parents=True, exist_ok=True)
    screens = planning.build(options, clock.speed)
    tokens = asyncio.run(provision(db_url, screens))
    booked: tuple[Bookings, bookings.Importer] | None = None
    if options.catalog:
        booked = _book(server_url, db_url, options, screens, clock, operator)
        if on_booked is not None:
            on_booked(booked[0])
    plans = worker_plans(server_url, clock, options, screens, tokens)
    started = time.monotonic()
    pool = WorkerPool(plans, on_report or (lambda _: None))
    run_start = plans[0].run_start_ms
    chores = _late(*booked, run_start) if booked else []
    interrupted = _drive(pool, view(clock, run_start), clock, chores)
    reconciliation = asyncio.run(reconcile(db_url, options.devices_dir, clock))
    return RunResult(
        clock=clock,
        run_start_ms=run_start,
        progress=pool.progress(),
        reconciliation=reconciliation,
        interrupted=interrupted,
        real_seconds=time.monotonic() - started,
        log_file=options.devices_dir / LOG_FILE,
        breaks=booked[0].breaks if booked else Breaks(),
    )


def _book(
    server_url: str,
    db_url: str,
    options: FleetOptions,
    screens: list[ScreenPlan],
    clock: SimClock,
    operator: str | None,
) -> tuple[Bookings, bookings.Importer]:
    """The fleet's catalog, written beside it and imported (but the late campaign)."""
    booked = bookings.book(screens, options, clock.now_ms())
    bookings.write(booked, options.devices_dir)
    if operator is None:
        operator = asyncio.run(add_operator(db_url, f"fleet-{secrets.token_hex(4)}"))
    importer = bookings.Importer(server_url, operator)
    # With a late campaign (the demo), the catalog is replaced: a campaign an earlier run
    # imported late is retired until its time comes again.
    importer.catalog(booked.first(), replace=booked.late is not None)
    importer.references(booked.document)
    return booked, importer


def _late(booked: Bookings, importer: bookings.Importer, run_start_ms: int) -> list[Chore]:
    """The late campaign's import, due part-way through the run."""
    late = booked.late
    if late is None:
        return []
    due = run_start_ms + booked.late_at_ms
    return [Chore(due, lambda: importer.catalog({"campaigns": [late]}))]


def _drive(pool: WorkerPool, view: View, clock: SimClock, chores: list[Chore]) -> bool:
    """Run the workers to their end, showing progress; whether Ctrl-C stopped them."""
    told = 0
    with Interrupts() as ctrl_c, view:
        pool.start()
        try:
            while pool.running:
                pool.poll(POLL_S)
                if ctrl_c.count > told:
                    told = ctrl_c.count
                    pool.stop(abort=told > 1)
                for chore in chores:
                    if not chore.done and clock.now_ms() >= chore.due_ms:
                        chore.run()
                view.update(pool.progress())
        finally:
            pool.stop(abort=True)
            pool.close()
    # A run stopped early still gets its late bookings: the verifier decides again.
    for chore in chores:
        if not chore.done:
            chore.run()
    return told > 0


async def reconcile(
    db_url: str, devices_dir: Path, clock: SimClock | None = None
) -> Reconciliation:
    """Reconcile every device folder under `devices_dir` with the database at `db_url`.

    With the service's `clock` (a run just ended, its verifier running), the verifier
    first gets time to decide what has settled, and pending plays are judged on that
    clock. Without it (`playproof reconcile`, the service perhaps stopped) pending plays
    are counted, not judged: no verifier may be running to decide them.
    """
    async with admin.opened(db_url) as store:
        if clock is None:
            return await reconcile_folder(store, devices_dir, None)
        screens = {path.parent.name for path in journal_files(devices_dir)}
        await accounting.settle(store, screens, lambda: Waits(clock.now_ms()), VERIFY_WAIT_S)
        return await reconcile_folder(store, devices_dir, Waits(clock.now_ms()))
