"""`playproof catalog ...` and `playproof rejects replay`: what was booked, rejects again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from playproof.config import load_policy
from playproof.stores import DEFAULT_URL

if TYPE_CHECKING:
    pass

from playproof.cli_common import (
    ConfigOption,
    DbOption,
    RuleOption,
    err,
    fail,
    on_store,
    run,
)

catalog = typer.Typer(help="The catalog of what was booked.", no_args_is_help=True)
rejects = typer.Typer(help="Rejected records: judge them again.", no_args_is_help=True)


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
    from playproof.server import catalogs

    print(json.dumps(json.loads(on_store(db_url, catalogs.show)), indent=2))


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
