"""The `playproof` command line: parses arguments, calls the public API, prints results."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from playproof.config import load_limits, load_policy
from playproof.errors import PlayproofError
from playproof.stores import DEFAULT_URL, redact_url

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


@app.command()
def serve(
    db_url: DbOption = DEFAULT_URL,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).")] = 8787,
    config: ConfigOption = None,
    rule: RuleOption = None,
    limit: LimitOption = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the ingest service."""
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
        service = Service(open_store(db_url), policy, limits=limits)
    except PlayproofError as exc:
        raise fail(str(exc)) from None
    try:
        serve_forever(service, host, port, log_level)
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror}") from None


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


@app.command()
def demo(port: Annotated[int, typer.Option(help="Port to serve on.")] = 8787) -> None:
    """Serve on the embedded SQLite default with a demo device and an example request."""
    from playproof import demo as demo_module

    demo_module.run(port)


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
    capacity: Annotated[int, typer.Option(help="Journal capacity in records.")] = 5760,
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
            checkpoint_s=checkpoint_interval,
        )
        capture = DEFAULT_CAPTURE if screenshots else None
        asyncio.run(
            run_player(config, items, speed=speed, seed=seed, capture=capture, max_plays=max_plays)
        )
    except PlayproofError as exc:
        raise fail(str(exc)) from None


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
