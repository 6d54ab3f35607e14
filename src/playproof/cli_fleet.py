"""`playproof demo`, `simulate` and `reconcile`: the fleet simulator and its oracle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from playproof.cli_common import DbOption, ServerOption, fail
from playproof.errors import PlayproofError
from playproof.stores import DEFAULT_URL

FleetDirOption = Annotated[
    Path, typer.Option("--devices-dir", help="One data folder per simulated screen, in here.")
]


Share = Annotated[float, typer.Option(min=0.0, max=1.0)]


JsonOption = Annotated[
    Path | None, typer.Option("--json", help="Also write the reconciliation as JSON here.")
]


AllOption = Annotated[bool, typer.Option("--all", help="List every device, not the worst 20.")]


def demo(
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8787,
    devices: Annotated[int, typer.Option(help="Simulated screens.")] = 50,
    duration: Annotated[str, typer.Option(help="Simulated time to run: 90s, 10m, 2h.")] = "10m",
    speed: Annotated[float, typer.Option(help="Simulated clock speed.")] = 10.0,
    seed: Annotated[int, typer.Option(help="Seed of the fleet's plan.")] = 1,
) -> None:
    """The service on ./playproof.db with a live simulated fleet, then the reconciliation."""
    from playproof.fleet.demo import run_demo

    try:
        code = run_demo(port, devices=devices, duration=duration, speed=speed, seed=seed)
    except PlayproofError as exc:
        raise fail(str(exc)) from None
    raise typer.Exit(code)


def simulate(
    server: ServerOption,
    db_url: DbOption = DEFAULT_URL,
    devices: Annotated[int, typer.Option(help="Simulated screens.")] = 100,
    duration: Annotated[str, typer.Option(help="Simulated time to run: 90s, 5m, 2h.")] = "10m",
    speed: Annotated[
        float | None, typer.Option(help="Clock speed; the service's must match (default: its).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed: the same seed, the same fleet and faults.")] = 1,
    devices_dir: FleetDirOption = Path("playproof.fleet"),
    workers: Annotated[int, typer.Option(help="Processes (0: as descriptors require).")] = 0,
    play_length: Annotated[str, typer.Option(help="Content lengths, MIN..MAX.")] = "10s..30s",
    capacity: Annotated[int, typer.Option(help="Journal capacity per screen.")] = 5760,
    drain: Annotated[float, typer.Option(help="Real seconds to deliver at the end.")] = 30.0,
    ramp: Annotated[float | None, typer.Option(help="Real seconds to start every screen.")] = None,
    no_faults: Annotated[bool, typer.Option("--no-faults", help="Disable every fault.")] = False,
    offline: Share = 0.1,
    offline_windows: Annotated[int, typer.Option(help="Offline windows per screen.")] = 2,
    offline_length: Annotated[str, typer.Option(help="Offline window lengths.")] = "1m..30m",
    long_offline: Share = 0.02,
    skew: Share = 0.1,
    skew_max: Annotated[str, typer.Option(help="Largest clock skew.")] = "6h",
    steps: Share = 0.05,
    skip: Share = 0.1,
    interrupt: Share = 0.02,
    error: Share = 0.01,
    loops: Share = 0.1,
    crash: Share = 0.05,
    crashes: Annotated[int, typer.Option(help="Crashes per crashing screen, at most.")] = 2,
    panel_off: Share = 0.0,
    ntp: Annotated[bool, typer.Option(help="Screens with good clocks use the fleet's NTP.")] = True,
    fast_journals: Annotated[
        bool, typer.Option("--fast-journals", help="Simulation only: journals without fsync.")
    ] = False,
    with_catalog: Annotated[
        bool,
        typer.Option(
            "--catalog/--no-catalog", help="Import the catalog that books the fleet first."
        ),
    ] = True,
    screenshots: Annotated[
        int, typer.Option(help="Screens taking proof screenshots (a simulated display).")
    ] = 0,
    live: Annotated[bool | None, typer.Option(help="Rich live view (default: on a TTY).")] = None,
    json_path: JsonOption = None,
    show_all: AllOption = False,
) -> None:
    """Run simulated screens through the device SDK against a service, then reconcile."""
    from playproof.fleet import commands
    from playproof.fleet.plan import Faults, FleetOptions, parse_duration, parse_range

    try:
        faults = Faults.none() if no_faults else Faults(
            offline, offline_windows, parse_range(offline_length), long_offline, skew,
            parse_duration(skew_max), steps, skip, interrupt, error, loops, crash, crashes,
            panel_off,
        )  # fmt: skip
        options = FleetOptions(
            devices, parse_duration(duration), devices_dir, seed, faults, parse_range(play_length),
            capacity=capacity, ramp_s=ramp, drain_s=drain, workers=workers, ntp=ntp,
            fast_journals=fast_journals, catalog=with_catalog, screenshots=screenshots,
        )  # fmt: skip
        code = commands.simulate(
            server, db_url, options, speed=speed, live=live, json_path=json_path, show_all=show_all
        )
    except PlayproofError as exc:
        raise fail(str(exc)) from None
    raise typer.Exit(code)


def reconcile(
    db_url: DbOption = DEFAULT_URL,
    devices_dir: FleetDirOption = Path("playproof.fleet"),
    json_path: JsonOption = None,
    show_all: AllOption = False,
) -> None:
    """Compare what stopped devices recorded with what the service holds; exit 1 on a loss."""
    from playproof.fleet import commands

    try:
        code = commands.reconcile(db_url, devices_dir, json_path, show_all)
    except PlayproofError as exc:
        raise fail(str(exc)) from None
    raise typer.Exit(code)
