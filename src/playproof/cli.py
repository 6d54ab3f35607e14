"""The `playproof` command line: parses arguments, calls the public API, prints results."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from playproof import cli_catalog, cli_evidence, cli_fleet, cli_keys, cli_panel, cli_reports
from playproof.cli_common import (
    ConfigOption,
    DbOption,
    DeviceIdOption,
    FromOption,
    LimitOption,
    RuleOption,
    ServerOption,
    StoreIdOption,
    TokenOption,
    ToOption,
    err,
    fail,
    query_params,
    run,
)
from playproof.config import load_limits, load_policy
from playproof.errors import PlayproofError
from playproof.stores import DEFAULT_URL, redact_url

if TYPE_CHECKING:
    from playproof.pipeline import Pipeline
    from playproof.rules import Policy


app = typer.Typer(
    help="playproof: proof-of-play impression recording.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
devices = typer.Typer(help="Register, list and revoke devices.", no_args_is_help=True)
db = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(devices, name="devices")
devices.add_typer(cli_keys.keys, name="keys")
app.add_typer(db, name="db")
operators = typer.Typer(help="Register, list and revoke operators.", no_args_is_help=True)
app.add_typer(cli_catalog.catalog, name="catalog")
for command in (cli_fleet.demo, cli_fleet.simulate, cli_fleet.reconcile):
    app.command()(command)
app.add_typer(operators, name="operators")
app.add_typer(cli_reports.report, name="report")
app.add_typer(cli_catalog.rejects, name="rejects")
app.command()(__import__("playproof.cli_agent").cli_agent.agent)  # issue 16: the local agent


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
    from playproof.listen import parse_listen
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
    config: ConfigOption = None,
    rule: RuleOption = None,
) -> None:
    """Load records from the JetStream pipeline into the database (run any number of these)."""
    from playproof.pipeline.run import run_loader
    from playproof.stores import open_store

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    store = open_store(db_url)
    # The loader commits, so it applies the cap on open gaps per journal, as `serve` does.
    store.max_open_gaps = load_policy(config, rule or []).max_open_gaps
    run(lambda: _upgrade_schema(db_url))
    run(lambda: run_loader(pipeline, store, partitions))


@devices.command("add")
def devices_add(
    device_id: Annotated[str, typer.Argument(help="The new device's id.")],
    store_id: StoreIdOption,
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
@cli_panel.with_panel_options
def player(
    server: ServerOption,
    token: TokenOption,
    device_id: DeviceIdOption,
    store_id: StoreIdOption,
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
    # issue 16: the renderer (mpv plays each item's `media`) -----------------------------
    renderer: Annotated[str, typer.Option(help="timer (no media) or mpv.")] = "timer",
    mpv_arg: Annotated[
        list[str] | None, typer.Option("--mpv-arg", help="An extra mpv option (repeatable).")
    ] = None,
    # end of issue 16 -------------------------------------------------------------------
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    signing: Annotated[
        bool, typer.Option(help="Sign plays (v2) with the key in --data-dir once registered.")
    ] = True,
    panel: cli_panel.PanelOptions = cli_panel.DEFAULTS,
) -> None:
    """Play a playlist in a loop and record every play (the reference player)."""
    from playproof.device import DEFAULT_CAPTURE, DeviceConfig, UplinkConfig
    from playproof.device.player import load_playlist, run_player

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        items = load_playlist(playlist)
        panel_options = cli_panel.panel_config(panel)
        config = DeviceConfig(
            device_id=device_id,
            store_id=store_id,
            data_dir=data_dir,
            uplink=UplinkConfig(server_url=server, token=token),
            ntp_servers=tuple(ntp or ()),
            capacity=capacity,
            journal_queue_bytes=queue_max_bytes,
            checkpoint_s=checkpoint_interval,
            signing=signing,
            panel=panel.panel,
            panel_options=panel_options,
        )
        capture = DEFAULT_CAPTURE if screenshots else None
        # issue 16: --renderer mpv ----------------------------------------------------------
        if renderer not in ("timer", "mpv"):
            raise fail(f"expected --renderer timer or mpv, got {renderer!r}")
        if renderer == "mpv":
            from playproof.device.mpv import run_mpv_player

            if speed != 1.0:
                raise fail("--speed is for the timer renderer: mpv plays media at its own pace")
            mpv = run_mpv_player(
                config,
                items,
                playlist.parent,
                seed=seed,
                screenshots=screenshots,
                mpv_args=mpv_arg or (),
                max_plays=max_plays,
            )
            asyncio.run(mpv)
            return
        # end of issue 16 -------------------------------------------------------------------
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
    """Verify plays apart from the service (`serve --no-verify`); several share PostgreSQL.

    Several verifiers on one PostgreSQL store divide the work screen by screen.
    """
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
    query = query_params(**given)
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
    # A past export names its own seller (PLAYPROOF_DV360_SELLER_ID may be set regardless).
    seller = None if export_id is not None else seller_id
    query = _export_query(since_last, export_id, from_=from_, to=to, seller_id=seller)
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


# --- evidence for buyers (cli_evidence.py): `export evidence`, `verify-evidence` --------

cli_evidence.register(app, export)


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
