"""`playproof report ...`: delivery, verification, rejects, devices and billing."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from playproof.config import load_policy
from playproof.stores import DEFAULT_URL

if TYPE_CHECKING:
    pass

from playproof.cli_common import (
    ConfigOption,
    CsvOption,
    DbOption,
    FilterOption,
    FromOption,
    RuleOption,
    ToOption,
    TzOption,
    err,
    filters_of,
    on_store,
    print_table,
    query_params,
    run,
)

report = typer.Typer(
    help="Delivery, verification, rejects, device and billing reports.", no_args_is_help=True
)


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
    from playproof.server import reports

    query = {**query_params(from_=from_, to=to, group_by=group_by, tz=tz), **filters_of(filters)}
    print_table(on_store(db_url, lambda store: reports.delivery(store, query)), as_csv)


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
    from playproof.server import verification_report

    query = {**query_params(from_=from_, to=to, group_by=group_by, tz=tz), **filters_of(filters)}
    table = on_store(db_url, lambda store: verification_report.verification(store, query))
    print_table(table, as_csv)
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
    from playproof.server import reports
    from playproof.server.ingest import wall_clock_ms

    query = query_params(from_=from_, to=to, group_by=group_by, tz=tz)
    counts = on_store(db_url, lambda store: reports.reject_counts(store, query, wall_clock_ms()))
    print_table(counts, as_csv)


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

    print_table(run(build), as_csv)


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

    query = query_params(
        from_=from_, to=to, tz=tz, supplier_id=supplier_id, campaign_id=campaign_id
    )

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
