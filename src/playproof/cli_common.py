"""What every `playproof` command shares: options, running an action, printing tables."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from playproof.errors import PlayproofError

if TYPE_CHECKING:
    from playproof.stores.base import Store

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


# What a screen's commands (player, agent, simulate, devices add) are told of the service
# and of the screen.
ServerOption = Annotated[str, typer.Option("--server", help="The ingest service's base URL.")]


TokenOption = Annotated[
    str, typer.Option("--token", envvar="PLAYPROOF_TOKEN", help="The device's bearer token.")
]


DeviceIdOption = Annotated[str, typer.Option("--device-id", help="This screen's device id.")]


StoreIdOption = Annotated[str, typer.Option("--store-id", help="The store the screen stands in.")]


T = TypeVar("T")


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


def on_store(db_url: str, read: Callable[[Store], Awaitable[T]]) -> T:
    """Run one action on the database at `db_url`, opened (and migrated) for it."""
    from playproof.server import admin

    async def go() -> T:
        async with admin.opened(db_url) as store:
            return await read(store)

    return run(go)


def query_params(**given: str | None) -> dict[str, str]:
    return {name.replace("from_", "from"): v for name, v in given.items() if v is not None}


def filters_of(flags: list[str] | None) -> dict[str, str]:
    found = {}
    for flag in flags or []:
        name, sep, value = flag.partition("=")
        if not sep:
            raise fail(f"expected --filter NAME=VALUE, got {flag!r}")
        found[name.strip()] = value.strip()
    return found


def print_table(table: Any, as_csv: bool) -> None:
    from playproof.server.formats import csv_text

    if as_csv:
        print(csv_text(table.columns, table.rows), end="")
        return
    shown = Table(*table.columns)
    for row in table.rows:
        shown.add_row(*(", ".join(v) if isinstance(v, list) else str(v) for v in row))
    Console().print(shown)
