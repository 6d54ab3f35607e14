"""The `playproof` command line: parses arguments, calls the public API, prints results."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from playproof.config import load_limits, load_policy
from playproof.errors import PlayproofError
from playproof.stores import DEFAULT_URL, redact_url

if TYPE_CHECKING:
    from playproof.pipeline import Pipeline
    from playproof.rules import Policy

T = TypeVar("T")

app = typer.Typer(
    help="playproof: proof-of-play impression recording.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
devices = typer.Typer(help="Register, list and revoke devices.", no_args_is_help=True)
db = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(devices, name="devices")
app.add_typer(db, name="db")
operators = typer.Typer(help="Register, list and revoke operators.", no_args_is_help=True)
report = typer.Typer(
    help="Delivery, verification, rejects and device reports.", no_args_is_help=True
)
rejects = typer.Typer(help="Rejected records: judge them again.", no_args_is_help=True)
catalog = typer.Typer(help="The catalog of what was booked.", no_args_is_help=True)
app.add_typer(catalog, name="catalog")
app.add_typer(operators, name="operators")
app.add_typer(report, name="report")
app.add_typer(rejects, name="rejects")

err = Console(stderr=True)

DbOption = Annotated[
    str,
    typer.Option(
        "--db", envvar="PLAYPROOF_DB", help="Database URL: sqlite:///PATH or postgresql://..."
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", envvar="PLAYPROOF_CONFIG", help="TOML file with a [rules] table."),
]
LimitOption = Annotated[
    list[str] | None,
    typer.Option("--limit", help="Override one service limit: NAME=VALUE (repeatable)."),
]
RuleOption = Annotated[
    list[str] | None,
    typer.Option("--rule", help="Override one rule threshold: NAME=VALUE (repeatable)."),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error for humans and return the Exit to raise."""
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def run(coro: Callable[[], Awaitable[T]]) -> T:
    """Run an admin coroutine, turning our errors into one clear line and exit code 1."""
    try:
        return asyncio.run(_call(coro))
    except (PlayproofError, ValueError) as exc:
        raise fail(str(exc)) from None


async def _call(coro: Callable[[], Awaitable[T]]) -> T:
    return await coro()


PipelineOption = Annotated[
    str | None,
    typer.Option(
        "--pipeline",
        envvar="PLAYPROOF_PIPELINE",
        help="jetstream://host:port[,host:port]?settings: commit through NATS JetStream.",
    ),
]


@app.command()
def serve(
    db_url: DbOption = DEFAULT_URL,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).")] = 8787,
    config: ConfigOption = None,
    rule: RuleOption = None,
    limit: LimitOption = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    sim_clock: Annotated[
        str | None,
        typer.Option(
            "--sim-clock",
            envvar="PLAYPROOF_SIM_CLOCK",
            help="Simulations only: a simulated clock, SPEED or speed=X,anchor=MS,epoch=MS.",
        ),
    ] = None,
    pipeline: PipelineOption = None,
    metrics_listen: Annotated[
        str | None,
        typer.Option(
            "--metrics-listen",
            envvar="PLAYPROOF_METRICS_LISTEN",
            help="HOST:PORT of a second listener serving /metrics without a token: "
            "bind it to a private address only (else /metrics needs an operator token).",
        ),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="Verify plays in this process (default); --no-verify when `playproof verify` "
            "runs apart.",
        ),
    ] = True,
) -> None:
    """Run the ingest service."""
    from playproof.fleet.simclock import service_clock
    from playproof.server.runner import parse_listen
    from playproof.server.runner import serve as serve_forever
    from playproof.server.service import Service
    from playproof.stores import open_store

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    # Migrate before serving: a schema newer than this code, or a database out of
    # reach, stops here with one clear line and exit code 1 instead of a traceback.
    run(lambda: _upgrade_schema(db_url))
    try:
        policy = load_policy(config, rule or [])
        limits = load_limits(config, limit or [])
        clock = service_clock(sim_clock)
        sink = _pipeline(pipeline, policy)
        metrics = None if metrics_listen is None else parse_listen(metrics_listen)
        service = Service(
            open_store(db_url), policy, limits=limits, pipeline=sink, verify=verify, **clock
        )
        serve_forever(service, host, port, log_level, metrics_listen=metrics)
    except PlayproofError as exc:
        raise fail(str(exc)) from None


def _pipeline(url: str | None, policy: Policy) -> Pipeline | None:
    """The pipeline `--pipeline` names, its servers reached first (one clear line if not)."""
    if url is None:
        return None
    from playproof.pipeline import open_pipeline, prepare

    sink = open_pipeline(url, policy)
    run(lambda: prepare(url))
    return sink


@app.command()
def load(
    pipeline: Annotated[
        str,
        typer.Option(
            "--pipeline", envvar="PLAYPROOF_PIPELINE", help="jetstream://host:port[,...]?settings"
        ),
    ],
    db_url: DbOption = DEFAULT_URL,
    partitions: Annotated[
        str | None, typer.Option(help="Partitions to load, e.g. 0,2 or 0-3 (default: all).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Load records from the JetStream pipeline into the database (run any number of these)."""
    from playproof.pipeline.run import run_loader
    from playproof.stores import open_store

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    run(lambda: _upgrade_schema(db_url))
    run(lambda: run_loader(pipeline, open_store(db_url), partitions))


@devices.command("add")
def devices_add(
    device_id: Annotated[str, typer.Argument(help="The new device's id.")],
    store_id: Annotated[str, typer.Option("--store-id", help="The store the screen stands in.")],
    db_url: DbOption = DEFAULT_URL,
) -> None:
    """Register a device; its bearer token is the only line printed on stdout."""
    from playproof.server import admin

    async def add() -> str:
        async with admin.opened(db_url) as store:
            return await admin.add_device(store, device_id, store_id)

    print(run(add))


@devices.command("list")
def devices_list(
    db_url: DbOption = DEFAULT_URL,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List registered devices."""
    from playproof.server import admin

    async def listing() -> list[Any]:
        async with admin.opened(db_url) as store:
            return list(await store.list_devices())

    rows = run(listing)
    if as_json:
        for row in rows:
            print(json.dumps(row._asdict()))
        return
    table = Table("device", "store", "created", "revoked")
    for row in rows:
        table.add_row(row.device_id, row.store_id, _when(row.created_at), _when(row.revoked_at))
    Console().print(table)


@devices.command("revoke")
def devices_revoke(
    device_id: Annotated[str, typer.Argument(help="The device whose token to revoke.")],
    db_url: DbOption = DEFAULT_URL,
) -> None:
    """Revoke a device's token: its requests get 403 and its stream closes with 4403."""
    from playproof.server import admin

    async def revoke() -> None:
        async with admin.opened(db_url) as store:
            await admin.revoke_device(store, device_id)

    run(revoke)
    err.print(f"revoked {device_id}")


@devices.command("rotate")
def devices_rotate(
    device_id: Annotated[str, typer.Argument(help="The device to give a new token.")],
    db_url: DbOption = DEFAULT_URL,
) -> None:
    """Give a device a new token (the only line on stdout); the old one stops working."""
    from playproof.server import admin

    async def rotate() -> str:
        async with admin.opened(db_url) as store:
            return await admin.rotate_device(store, device_id)

    print(run(rotate))


@devices.command("show")
def devices_show(
    device_id: Annotated[str, typer.Argument(help="The device to show.")],
    db_url: DbOption = DEFAULT_URL,
    config: ConfigOption = None,
    rule: RuleOption = None,
) -> None:
    """Print one device's health as JSON: status, evictions, sequences, gaps, losses."""
    from playproof.server import admin

    async def show() -> dict[str, Any]:
        policy = load_policy(config, rule or [])
        async with admin.opened(db_url) as store:
            return await admin.device_health(store, device_id, policy=policy)

    print(json.dumps(run(show), indent=2))


FleetDirOption = Annotated[
    Path, typer.Option("--devices-dir", help="One data folder per simulated screen, in here.")
]
Share = Annotated[float, typer.Option(min=0.0, max=1.0)]
JsonOption = Annotated[
    Path | None, typer.Option("--json", help="Also write the reconciliation as JSON here.")
]
AllOption = Annotated[bool, typer.Option("--all", help="List every device, not the worst 20.")]


@app.command()
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


@app.command()
def simulate(
    server: Annotated[str, typer.Option("--server", help="The ingest service's base URL.")],
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


@app.command()
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


@db.command("upgrade")
def db_upgrade(db_url: DbOption = DEFAULT_URL) -> None:
    """Bring the database schema up to this version of playproof."""
    run(lambda: _upgrade_schema(db_url))
    err.print(f"schema of {redact_url(db_url)} is up to date")


async def _upgrade_schema(db_url: str) -> None:
    from playproof.server import admin

    async with admin.opened(db_url):
        pass


@app.command()
def player(
    server: Annotated[str, typer.Option("--server", help="The ingest service's base URL.")],
    token: Annotated[
        str, typer.Option("--token", envvar="PLAYPROOF_TOKEN", help="The device's bearer token.")
    ],
    device_id: Annotated[str, typer.Option("--device-id", help="This screen's device id.")],
    store_id: Annotated[str, typer.Option("--store-id", help="The store the screen stands in.")],
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="The device's data folder (journal, screenshots).")
    ],
    playlist: Annotated[Path, typer.Option("--playlist", help="Playlist JSON file.")],
    speed: Annotated[float, typer.Option(help="Divide every item's duration by this.")] = 1.0,
    ntp: Annotated[
        list[str] | None, typer.Option("--ntp", help="NTP server host:port (repeatable).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for skips and screenshot moments.")] = None,
    checkpoint_interval: Annotated[
        float, typer.Option(help="Seconds between checkpoints of a play under way.")
    ] = 5.0,
    capacity: Annotated[
        int, typer.Option(help="Records kept at most past the 4 h offline limit (younger: all).")
    ] = 5760,
    queue_max_bytes: Annotated[
        int, typer.Option(help="Bytes of queued records at most; past it the oldest go.")
    ] = 64 * 1024 * 1024,
    screenshots: Annotated[
        bool, typer.Option(help="Take proof screenshots (when a display exists).")
    ] = True,
    max_plays: Annotated[
        int | None, typer.Option(help="Stop after this many plays (default: never).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Play a playlist in a loop and record every play (the reference player)."""
    from playproof.device import DEFAULT_CAPTURE, DeviceConfig, UplinkConfig
    from playproof.device.player import load_playlist, run_player

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        items = load_playlist(playlist)
        config = DeviceConfig(
            device_id=device_id,
            store_id=store_id,
            data_dir=data_dir,
            uplink=UplinkConfig(server_url=server, token=token),
            ntp_servers=tuple(ntp or ()),
            capacity=capacity,
            journal_queue_bytes=queue_max_bytes,
            checkpoint_s=checkpoint_interval,
        )
        capture = DEFAULT_CAPTURE if screenshots else None
        asyncio.run(
            run_player(config, items, speed=speed, seed=seed, capture=capture, max_plays=max_plays)
        )
    except PlayproofError as exc:
        raise fail(str(exc)) from None


@operators.command("add")
def operators_add(
    name: Annotated[str, typer.Argument(help="The new operator's name.")],
    db_url: DbOption = DEFAULT_URL,
) -> None:
    """Register an operator; its bearer token is the only line printed on stdout."""
    from playproof.server import admin
    from playproof.server.operators import add_operator

    async def add() -> str:
        async with admin.opened(db_url) as store:
            return await add_operator(store, name)

    print(run(add))


@operators.command("list")
def operators_list(db_url: DbOption = DEFAULT_URL) -> None:
    """List registered operators."""
    from playproof.server import admin

    async def listing() -> list[Any]:
        async with admin.opened(db_url) as store:
            return list(await store.list_operators())

    table = Table("operator", "created", "revoked")
    for row in run(listing):
        table.add_row(row.name, _when(row.created_at), _when(row.revoked_at))
    Console().print(table)


@operators.command("revoke")
def operators_revoke(
    name: Annotated[str, typer.Argument(help="The operator whose token to revoke.")],
    db_url: DbOption = DEFAULT_URL,
) -> None:
    """Revoke an operator's token: its requests get 403 within 2 s."""
    from playproof.server import admin
    from playproof.server.operators import revoke_operator

    async def revoke() -> None:
        async with admin.opened(db_url) as store:
            await revoke_operator(store, name)

    run(revoke)
    err.print(f"revoked {name}")


FromOption = Annotated[
    str | None, typer.Option("--from", help="Start: RFC 3339, or a date (midnight in --tz).")
]
ToOption = Annotated[str | None, typer.Option("--to", help="End (excluded), as --from.")]
TzOption = Annotated[str | None, typer.Option("--tz", help="UTC or an IANA zone name.")]
CsvOption = Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")]
FilterOption = Annotated[
    list[str] | None,
    typer.Option(
        "--filter", help="Only rows with NAME=VALUE, e.g. supplier_id=sup-1 (repeatable)."
    ),
]


def _query(**given: str | None) -> dict[str, str]:
    return {name.replace("from_", "from"): v for name, v in given.items() if v is not None}


def _filters(flags: list[str] | None) -> dict[str, str]:
    found = {}
    for flag in flags or []:
        name, sep, value = flag.partition("=")
        if not sep:
            raise fail(f"expected --filter NAME=VALUE, got {flag!r}")
        found[name.strip()] = value.strip()
    return found


def _print_table(table: Any, as_csv: bool) -> None:
    from playproof.server.formats import csv_text

    if as_csv:
        print(csv_text(table.columns, table.rows), end="")
        return
    shown = Table(*table.columns)
    for row in table.rows:
        shown.add_row(*(", ".join(v) if isinstance(v, list) else str(v) for v in row))
    Console().print(shown)


@report.command("delivery")
def report_delivery(
    from_: FromOption = None,
    to: ToOption = None,
    group_by: Annotated[
        str, typer.Option("--group-by", help="Comma-separated: campaign_id, ..., hour, day.")
    ] = "campaign_id,day",
    tz: TzOption = None,
    filters: FilterOption = None,
    as_csv: CsvOption = False,
    db_url: DbOption = DEFAULT_URL,
) -> None:
    """Valid and partial plays, played seconds and mean quality per group (what billing reads)."""
    from playproof.server import admin, reports

    query = {**_query(from_=from_, to=to, group_by=group_by, tz=tz), **_filters(filters)}

    async def build() -> Any:
        async with admin.opened(db_url) as store:
            return await reports.delivery(store, query)

    _print_table(run(build), as_csv)


@report.command("verification")
def report_verification(
    from_: FromOption = None,
    to: ToOption = None,
    group_by: Annotated[
        str,
        typer.Option(
            "--group-by", help="Comma-separated: reason, campaign_id, ..., device_id, hour, day."
        ),
    ] = "campaign_id",
    tz: TzOption = None,
    filters: FilterOption = None,
    as_csv: CsvOption = False,
    db_url: DbOption = DEFAULT_URL,
) -> None:
    """Valid plays verified, failed and pending per group; with `reason`, failures by reason."""
    from playproof.server import admin, verification_report

    query = {**_query(from_=from_, to=to, group_by=group_by, tz=tz), **_filters(filters)}

    async def build() -> Any:
        async with admin.opened(db_url) as store:
            return await verification_report.verification(store, query)

    table = run(build)
    _print_table(table, as_csv)
    if "counting" in table.meta and not as_csv:
        totals = table.meta["totals"]
        err.print(f"{totals['failed_plays']} plays failed; {table.meta['counting']}")


@report.command("rejects")
def report_rejects(
    from_: FromOption = None,
    to: ToOption = None,
    group_by: Annotated[
        str, typer.Option("--group-by", help="Comma-separated: reason, device_id, hour, day.")
    ] = "reason",
    tz: TzOption = None,
    as_csv: CsvOption = False,
    db_url: DbOption = DEFAULT_URL,
) -> None:
    """Rejected records counted by reason (and device, hour or day); the last day by default."""
    from playproof.server import admin, reports
    from playproof.server.ingest import wall_clock_ms

    query = _query(from_=from_, to=to, group_by=group_by, tz=tz)

    async def build() -> Any:
        async with admin.opened(db_url) as store:
            return await reports.reject_counts(store, query, wall_clock_ms())

    _print_table(run(build), as_csv)


@report.command("devices")
def report_devices(
    as_csv: CsvOption = False,
    db_url: DbOption = DEFAULT_URL,
    config: ConfigOption = None,
    rule: RuleOption = None,
) -> None:
    """Every device's health: last seen, skew, clock, queue, sequences, problems."""
    from playproof.server import admin, reports
    from playproof.server.ingest import wall_clock_ms

    async def build() -> Any:
        policy = load_policy(config, rule or [])
        async with admin.opened(db_url) as store:
            views = await reports.devices(store, {}, wall_clock_ms(), policy)
            return reports.device_table(views)

    _print_table(run(build), as_csv)


@catalog.command("import")
def catalog_import(
    file: Annotated[Path, typer.Argument(help="The catalog document (JSON).")],
    replace: Annotated[
        bool,
        typer.Option("--replace", help="Make the catalog exactly the file, retiring the rest."),
    ] = False,
    db_url: DbOption = DEFAULT_URL,
) -> None:
    """Merge a catalog file into the catalog (or replace it); print each change.

    Reference images the file names are read relative to it and kept. Importing
    the same file twice changes nothing.
    """
    from playproof.catalog import parse_catalog
    from playproof.server import admin, catalogs
    from playproof.server.ingest import wall_clock_ms

    try:
        data = file.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {file}: {exc.strerror}") from None

    async def go() -> tuple[list[Any], int]:
        now = wall_clock_ms()
        async with admin.opened(db_url) as store:
            changes = await catalogs.import_catalog(store, data, replace, now)
            added = await catalogs.import_references(
                store, parse_catalog(data), file.resolve().parent, now
            )
            return changes, added

    changes, added = run(go)
    for change in changes:
        print(f"{change.action}\t{change.kind}\t{change.id}")
    err.print(f"{len(changes)} changes, {added} new reference images")


@catalog.command("show")
def catalog_show(db_url: DbOption = DEFAULT_URL) -> None:
    """Print the catalog's active entries as one JSON document."""
    from playproof.server import admin, catalogs

    async def go() -> bytes:
        async with admin.opened(db_url) as store:
            return await catalogs.show(store)

    print(json.dumps(json.loads(run(go)), indent=2))


@app.command()
def verify(
    db_url: DbOption = DEFAULT_URL,
    config: ConfigOption = None,
    rule: RuleOption = None,
    limit: LimitOption = None,
    once: Annotated[
        bool, typer.Option("--once", help="Decide what is pending now, then exit.")
    ] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Verify plays apart from the service (run `serve --no-verify`); several may share a
    PostgreSQL store, screen by screen."""
    from playproof.server import admin
    from playproof.server.ingest import wall_clock_ms
    from playproof.server.verifier import Verifier

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")

    async def go() -> int:
        policy = load_policy(config, rule or [])
        limits = load_limits(config, limit or [])
        async with admin.opened(db_url) as store:
            verifier = Verifier(store, wall_clock_ms, policy, limits)
            if once:
                return await verifier.drain()
            await verifier.run()
            return 0

    try:
        decided = run(go)
    except KeyboardInterrupt:
        return
    err.print(f"decided {decided} plays")


@rejects.command("replay")
def rejects_replay(
    reason: Annotated[str, typer.Option("--reason", help="Replay the rejects of this reason.")],
    since: Annotated[
        str, typer.Option("--since", help="Received since: RFC 3339, or a date (UTC midnight).")
    ],
    db_url: DbOption = DEFAULT_URL,
    config: ConfigOption = None,
    rule: RuleOption = None,
) -> None:
    """Judge rejected records again with today's code and rules (the day a bug is fixed).

    Each is judged as it was when it arrived (its batch's times, the device's store);
    the reject stays for audit, marked with what the record became. Safe to run twice.
    """
    from playproof.server import admin, params, replay
    from playproof.server.ingest import wall_clock_ms

    async def go() -> Any:
        policy = load_policy(config, rule or [])
        start = params.parse_time("--since", since)
        async with admin.opened(db_url) as store:
            return await replay.replay(store, reason, start, policy, wall_clock_ms())

    counts = run(go)
    for outcome, n in sorted(counts.items()):
        print(f"{outcome}\t{n}")
    err.print(f"replayed {sum(counts.values())} rejects of reason {reason!r}")


@report.command("billing")
def report_billing(
    from_: Annotated[
        str, typer.Option("--from", help="Start: RFC 3339, or a date (midnight in --tz).")
    ],
    to: Annotated[str, typer.Option("--to", help="End (excluded), as --from.")],
    tz: TzOption = None,
    supplier_id: Annotated[
        str | None, typer.Option("--supplier-id", help="Only this supplier's lines.")
    ] = None,
    campaign_id: Annotated[
        str | None, typer.Option("--campaign-id", help="Only this campaign's lines.")
    ] = None,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="Print the lines as CSV (billing.CSV_COLUMNS).")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the document GET /v1/reports/billing answers.")
    ] = False,
    db_url: DbOption = DEFAULT_URL,
    config: ConfigOption = None,
    rule: RuleOption = None,
) -> None:
    """The billing statement of a period: lines, adjustments, totals, status and digest.

    Final once its period has settled (then kept, and printed as kept ever after);
    provisional before. Its clock is this machine's.
    """
    from playproof import cli_billing
    from playproof.server import admin, statements
    from playproof.server.ingest import wall_clock_ms

    query = _query(from_=from_, to=to, tz=tz, supplier_id=supplier_id, campaign_id=campaign_id)

    async def build() -> bytes:
        policy = load_policy(config, rule or [])
        async with admin.opened(db_url) as store:
            return await statements.billing_statement(store, query, wall_clock_ms(), policy)

    document = run(build)
    if as_json:
        print(document.decode())
    elif as_csv:
        print(cli_billing.statement_csv(json.loads(document)), end="")
    else:
        cli_billing.print_statement(json.loads(document))


# --- buyer exports (cli_exports.py) ---------------------------------------------------

export = typer.Typer(
    help="Buyer exports (DV360 ad plays, UK Playout files): each verified play sent once.",
    no_args_is_help=True,
)
app.add_typer(export, name="export")

SinceLastOption = Annotated[
    bool,
    typer.Option("--since-last", help="Every verified play not yet exported to this buyer."),
]
ExportIdOption = Annotated[
    int | None, typer.Option("--id", help="Write past export ID again, byte for byte.")
]
OutOption = Annotated[Path | None, typer.Option("--out", help="Write here (default: stdout).")]
SkippedOption = Annotated[
    Path | None, typer.Option("--skipped", help="Also write the plays listed apart here (CSV).")
]


def _export(
    buyer: str,
    query: dict[str, str],
    default_seller: str,
    out: Path | None,
    skipped: Path | None,
    db_url: str,
) -> None:
    from playproof import cli_exports

    info, reasons = run(
        lambda: cli_exports.write_export(db_url, buyer, query, default_seller, out, skipped)
    )
    err.print(cli_exports.describe(info, reasons), highlight=False)


def _export_query(since_last: bool, export_id: int | None, **given: str | None) -> dict[str, str]:
    query = _query(**given)
    if since_last:
        query["since"] = "last"
    if export_id is not None:
        query["export_id"] = str(export_id)
    return query


@export.command("dv360")
def export_dv360(
    since_last: SinceLastOption = False,
    export_id: ExportIdOption = None,
    from_: FromOption = None,
    to: ToOption = None,
    seller_id: Annotated[
        str | None,
        typer.Option(
            "--seller-id",
            envvar="PLAYPROOF_DV360_SELLER_ID",
            help="The DV360 seller (default: the dv360_seller_id limit of --config).",
        ),
    ] = None,
    out: OutOption = None,
    skipped: SkippedOption = None,
    db_url: DbOption = DEFAULT_URL,
    config: ConfigOption = None,
) -> None:
    """DV360 Out-of-Home ad plays: sellers.adPlays.batchCreate request bodies, one a line.

    Plays that started more than 3 days ago, or miss an external id, are listed apart
    (--skipped); a play is never sent twice.
    """
    query = _export_query(since_last, export_id, from_=from_, to=to, seller_id=seller_id)
    try:
        default = load_limits(config).dv360_seller_id
    except PlayproofError as exc:
        raise fail(str(exc)) from None
    _export("dv360", query, default, out, skipped, db_url)


@export.command("playout")
def export_playout(
    since_last: SinceLastOption = False,
    export_id: ExportIdOption = None,
    from_: FromOption = None,
    to: ToOption = None,
    out: OutOption = None,
    skipped: SkippedOption = None,
    db_url: DbOption = DEFAULT_URL,
) -> None:
    """A UK Playout (Outsmart) digital CSV file: 19 fields, no header, LF after each record.

    Plays older than 14 days, in the future, overlapping one already filed on their frame
    by more than 1.5 s, or missing a mandatory field, are listed apart (--skipped).
    """
    query = _export_query(since_last, export_id, from_=from_, to=to)
    _export("playout", query, "", out, skipped, db_url)


def _when(ms: int | None) -> str:
    if ms is None:
        return ""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def main() -> None:
    """Entry point of the `playproof` command."""
    app(prog_name="playproof")


if __name__ == "__main__":
    main()
