"""`playproof report billing`: a statement's document as readable tables, CSV or JSON.

Everything printed comes from the document `server.statements.billing_statement`
returns, the one `GET /v1/reports/billing` answers: the numbers are the API's,
character for character.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from rich.console import Console
from rich.table import Table

from playproof.billing import CSV_COLUMNS, csv_row
from playproof.server.formats import csv_text
from playproof.server.statements import document_lines

# Wide enough for every column of a line when the output is not a terminal.
PIPE_WIDTH: Final = 200

_LINE_COLUMNS: Final = (
    ("supplier", "supplier_id"),
    ("campaign", "campaign_id"),
    ("ad group", "ad_group_id"),
    ("plays", "plays"),
    ("valid", "valid"),
    ("partial", "partial"),
    ("verified", "verified"),
    ("failed", "failed"),
    ("pending", "pending"),
    ("billable", "billable_plays"),
    ("impressions", "impressions"),
    ("model", "price_model"),
    ("price", "price_amount"),
    ("amount", "amount"),
    ("currency", "currency"),
)
_ADJUSTMENT_COLUMNS: Final = (
    ("period from", "period_from"),
    ("period to", "period_to"),
    ("supplier", "supplier_id"),
    ("campaign", "campaign_id"),
    ("ad group", "ad_group_id"),
    ("billable", "billable_plays"),
    ("impressions", "impressions"),
    ("amount", "amount"),
    ("currency", "currency"),
)
_TOTAL_COLUMNS: Final = (
    ("supplier", "supplier_id"),
    ("currency", "currency"),
    ("billable", "billable_plays"),
    ("impressions", "impressions"),
    ("amount", "amount"),
    ("adjustments", "adjustments"),
    ("amount due", "amount_due"),
)


def statement_csv(document: dict[str, Any]) -> str:
    """The lines as CSV: `billing.CSV_COLUMNS`, a header, then one row a line."""
    return csv_text(CSV_COLUMNS, [csv_row(line) for line in document_lines(document)])


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _table(title: str, columns: Sequence[tuple[str, str]], items: list[dict[str, Any]]) -> Table:
    table = Table(*(name for name, _ in columns), title=title, title_justify="left")
    for item in items:
        table.add_row(*(_text(item[field]) for _, field in columns))
    return table


def _failures(document: dict[str, Any]) -> Table:
    table = Table("supplier", "currency", "reason", "plays", title="Failures by reason")
    table.title_justify = "left"
    for total in document["totals"]["by_supplier"]:
        for reason, plays in total["failed_by_reason"].items():
            table.add_row(total["supplier_id"], _text(total["currency"]), reason, str(plays))
    return table


def _adjustment_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    # The corrected plays are many at times: counted here, listed in --json.
    return [{**item, "plays": len(item["plays"])} for item in document["adjustments"]]


def print_statement(document: dict[str, Any]) -> None:
    """The statement for a reader: period, status, digest, lines, adjustments, totals."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=PIPE_WIDTH)
    filters = ", ".join(f"{k}={v}" for k, v in document["filters"].items() if v) or "none"
    settled = document["finalized_at"] or f"not yet (settles at {document['settles_at']})"
    console.print(
        f"Statement {document['from']} to {document['to']} ({document['tz']}), "
        f"filters: {filters}\nstatus: {document['status']}; final: {settled}\n"
        f"digest: {document['digest']}",
        highlight=False,
    )
    console.print(_table("Lines", _LINE_COLUMNS, document["lines"]))
    if document["adjustments"]:
        columns = (*_ADJUSTMENT_COLUMNS, ("plays corrected", "plays"))
        console.print(_table("Adjustments", columns, _adjustment_rows(document)))
    console.print(_table("Totals by supplier", _TOTAL_COLUMNS, document["totals"]["by_supplier"]))
    by_currency = _TOTAL_COLUMNS[1:]
    console.print(_table("Totals by currency", by_currency, document["totals"]["by_currency"]))
    console.print(_failures(document))
    console.print(document["rounding"], highlight=False)
