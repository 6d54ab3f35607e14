"""`make demo`: the service on ./playproof.db and a live simulated fleet, then the oracle.

The service runs as a child process on a simulated clock (10x by default, shown
in its log and /healthz); about fifty screens, each with its own data folder
under ./playproof.fleet and its own token, play through the real device SDK
with a few faults (offline windows, skewed and stepped clocks, skips,
interruptions, crashes). A catalog booking the fleet is imported first, broken on
purpose in a few places (bookings.py: a campaign booked for one store, a screen
layering a banner on a one-zone booking, a screen showing the wrong picture, a
campaign imported late) so that the verifier has failures to explain; a few
screens take proof screenshots. The terminal shows the fleet live; at the end (or
at Ctrl-C) the fleet drains, the verifier catches up, every ledger is reconciled
with the database (verification included), and the service stops. Exit code 0,
or 1 when a play was lost, counted twice or stuck in verification.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Final

from rich.console import Console

from playproof.fleet import accounting, commands, evidence_check, report, simulator
from playproof.fleet.bookings import Bookings
from playproof.fleet.plan import (
    MINUTE_MS,
    SECOND_MS,
    Faults,
    FleetOptions,
    parse_duration,
    show_duration,
)
from playproof.fleet.provision import add_operator
from playproof.fleet.service import ServiceProcess
from playproof.fleet.simulator import Interrupts
from playproof.server import admin
from playproof.stores import DEFAULT_URL

DEVICES_DIR: Final = Path("playproof.fleet")
SERVICE_LOG: Final = Path("playproof.service.log")
OPERATOR_TOKEN_FILE: Final = Path("playproof.operator-token")
# A few of everything, scaled for a run of minutes.
FAULTS: Final = Faults(
    offline=0.12,
    offline_windows=1,
    offline_length=(30 * SECOND_MS, 3 * MINUTE_MS),
    long_offline=0.0,
    skew=0.1,
    skew_max_ms=2 * MINUTE_MS,  # held records (ahead of time) deliver within the demo
    steps=0.04,
    skip=0.1,
    interrupt=0.03,
    error=0.01,
    loops=0.1,
    crash=0.06,
    crashes=1,
    panel_off=0.06,  # a few displays off for a while: their plays are partial, panel_off
)
# Screens taking proof screenshots: a few, whatever the fleet's size.
CAPTURING: Final = (3, 10)  # at least 3, or one in 10


def banner(url: str, operator: str, speed: float, options: FleetOptions) -> str:
    """Where to look while the demo runs."""
    real_s = options.duration_ms / 1000 / speed
    return (
        f"\n  playproof demo: service on {url} (database {DEFAULT_URL}, log {SERVICE_LOG})\n"
        f"  dashboard: {url}/   operator token (also in {OPERATOR_TOKEN_FILE}):\n\n"
        f"    {operator}\n\n"
        f"  {options.devices} simulated screens at {speed:g}x for "
        f"{show_duration(options.duration_ms)} of simulated time (about {real_s:.0f} s real), "
        f"data in {DEVICES_DIR}/\n"
        "  Ctrl-C stops the fleet early; it drains, reconciles and exits.\n"
    )


def broken_line(booked: Bookings) -> str:
    """What the demo broke on purpose, and where to see what the verifier made of it."""
    return (
        f"  broken on purpose, for the verifier to explain: {booked.breaks.describe()}.\n"
        "  See it on the dashboard or with `playproof report verification --group-by reason`.\n"
    )


def run_demo(
    port: int = 8787,
    *,
    devices: int = 50,
    duration: str = "10m",
    speed: float = 10.0,
    seed: int = 1,
) -> int:
    """Run the demo; the exit code (0 clean, 1 when a play was lost, counted twice or stuck)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = report.console()
    options = demo_options(devices, duration, seed)
    service = ServiceProcess(DEFAULT_URL, port, SERVICE_LOG, sim_clock=f"{speed:g}")
    with Interrupts() as ctrl_c:
        try:
            url = service.start()
            operator = asyncio.run(
                add_operator(DEFAULT_URL, f"demo-{time.strftime('%Y%m%d%H%M%S')}")
            )
            OPERATOR_TOKEN_FILE.write_text(operator + "\n")
            console.print(banner(url, operator, speed, options), highlight=False)
            if ctrl_c.count:
                return _reconcile_only(console)
            return _run_fleet(url, operator, options, speed, console)
        finally:
            service.stop()


def demo_options(devices: int, duration: str, seed: int) -> FleetOptions:
    """The demo's fleet: its faults, a few capturing screens, and its deliberate breaks."""
    return FleetOptions(
        devices,
        parse_duration(duration),
        DEVICES_DIR,
        seed,
        FAULTS,
        drain_s=15.0,
        screenshots=min(devices, max(CAPTURING[0], devices // CAPTURING[1])),
        breaks=True,
    )


def _run_fleet(
    url: str, operator: str, options: FleetOptions, speed: float, console: Console
) -> int:
    views = commands.views(url, options, None, console)
    result = simulator.run(
        url,
        DEFAULT_URL,
        options,
        views,
        speed,
        operator=operator,
        on_booked=lambda booked: console.print(broken_line(booked), highlight=False),
    )
    commands.finish(result, console, None, False)
    if result.breaks.late:
        console.print(asyncio.run(late_line(DEFAULT_URL, result.breaks.late)), highlight=False)
    checked = evidence_check.check(url, operator)
    console.print(checked.line, highlight=False)
    clean = result.reconciliation.ok and not result.progress.failed
    return 0 if clean and checked.ok else 1


async def late_line(db_url: str, campaign_id: str) -> str:
    """What became of the late campaign's plays decided before it was booked."""
    async with admin.opened(db_url) as store:
        now = await accounting.once_unknown(store, campaign_id)
    if not now:
        return f"  late campaign {campaign_id}: none of its plays was decided before its import"
    shown = ", ".join(f"{n:,} {status}" for status, n in sorted(now.items()))
    return (
        f"  late campaign {campaign_id}: {sum(now.values()):,} plays failed unknown_campaign "
        f"before its import; decided again, they are now: {shown}"
    )


def _reconcile_only(console: Console) -> int:
    """Stopped before the fleet started: reconcile what earlier runs left."""
    if not DEVICES_DIR.is_dir():
        return 0
    return commands.reconcile(DEFAULT_URL, DEVICES_DIR, None, False)
