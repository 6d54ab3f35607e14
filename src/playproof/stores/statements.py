"""Billing statements as both stores keep them: keys, stored rows, and the SQL they share.

A final statement is kept once (migration 0006), keyed by its period, zone and
filters, with the JSON document answered for it (returned byte for byte ever
after), its digest, and the verification log's last id when it was counted.
Beside it are its **billed lines**: the lines as last billed, the log id they
were counted at, and a revision. They start as the statement's own lines; a
later final statement that carries adjustments for it moves them to what it
recounted, checking and bumping the revision in the same transaction, so that
each correction is billed once even when two statements turn final at once.

The statement itself is built above the stores (`server/statements.py`); the
reads here take any `Reader`, so that they run inside `statement_snapshot`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, NamedTuple

from playproof.stores.verdicts import CatalogState, catalog_of

if TYPE_CHECKING:
    from playproof.stores.base import Reader

_KEY_COLUMNS: Final = ("period_from", "period_to", "tz", "supplier_id", "campaign_id")
_BILLED_COLUMNS: Final = ("billed_lines", "billed_mark", "billed_rev")
_COLUMNS: Final = (*_KEY_COLUMNS, "document", "digest", "finalized_at", "log_mark")


class StatementKey(NamedTuple):
    """Which statement: its period [from, to) in epoch ms, its zone, its filters ('' for all)."""

    period_from: int
    period_to: int
    tz: str
    supplier_id: str = ""
    campaign_id: str = ""

    @property
    def filters(self) -> tuple[tuple[str, str], ...]:
        """The report filters the statement applies (none for '')."""
        named = (("supplier_id", self.supplier_id), ("campaign_id", self.campaign_id))
        return tuple((name, value) for name, value in named if value)

    def label(self) -> str:
        """The key as one line of text (who adjusted a statement last, in messages)."""
        supplier, campaign = self.supplier_id or "*", self.campaign_id or "*"
        return (
            f"[{self.period_from}, {self.period_to}) {self.tz} "
            f"supplier={supplier} campaign={campaign}"
        )


class Billed(NamedTuple):
    """A final statement's lines as last billed: JSON, the log id they were counted at."""

    key: StatementKey
    lines: str
    mark: int
    rev: int = 0


class FinalStatement(NamedTuple):
    """A statement as kept once it is final; `billed` holds its own lines at revision 0."""

    key: StatementKey
    document: str
    digest: str
    finalized_at: int
    billed: Billed


class Rebase(NamedTuple):
    """A final statement's billed lines moved to those a later final statement adjusted to."""

    was: Billed
    lines: str
    mark: int


def placeholder(reader: Reader) -> str:
    """The parameter placeholder of the reader's dialect."""
    return "%s" if reader.dialect == "postgres" else "?"


def key_where(ph: str) -> str:
    """The condition naming one statement by its key (five parameters, in key order)."""
    return " AND ".join(f"{column} = {ph}" for column in _KEY_COLUMNS)


def insert_sql(ph: str) -> str:
    """INSERT of a final statement (FinalStatement's columns, then billed lines, mark, by)."""
    columns = (*_COLUMNS, *_BILLED_COLUMNS[:2])
    return (
        f"INSERT INTO statements ({', '.join(columns)}) "
        f"VALUES ({', '.join([ph] * len(columns))}) ON CONFLICT DO NOTHING"
    )


def insert_params(final: FinalStatement) -> tuple[Any, ...]:
    """The parameters of `insert_sql`."""
    fixed = (final.document, final.digest, final.finalized_at, final.billed.mark)
    return (*final.key, *fixed, final.billed.lines, final.billed.mark)


def rebase_sql(ph: str) -> str:
    """UPDATE of billed lines, only at the revision read (lines, mark, by, key, revision)."""
    return (
        f"UPDATE statements SET billed_lines = {ph}, billed_mark = {ph}, "
        f"billed_rev = billed_rev + 1, billed_by = {ph} "
        f"WHERE {key_where(ph)} AND billed_rev = {ph}"
    )


def rebase_params(rebase: Rebase, by: StatementKey) -> tuple[Any, ...]:
    """The parameters of `rebase_sql`."""
    return (rebase.lines, rebase.mark, by.label(), *rebase.was.key, rebase.was.rev)


def document_sql(ph: str) -> str:
    """The stored document of one statement."""
    return f"SELECT document FROM statements WHERE {key_where(ph)}"


# --- reads (through a Reader: a store, or one snapshot of it) ---------------------


async def stored_document(reader: Reader, key: StatementKey) -> str | None:
    """The document of a final statement, exactly as stored; None if it is not final."""
    rows = await reader.read_rows(document_sql(placeholder(reader)), tuple(key))
    return None if not rows else str(rows[0][0])


async def billed_before(reader: Reader, key: StatementKey) -> list[Billed]:
    """Final statements of the same filters that ended by `key`'s start, oldest first."""
    ph = placeholder(reader)
    rows = await reader.read_rows(
        f"SELECT {', '.join((*_KEY_COLUMNS, *_BILLED_COLUMNS))} FROM statements "
        f"WHERE supplier_id = {ph} AND campaign_id = {ph} AND period_to <= {ph} "
        "ORDER BY period_from, period_to, tz",
        (key.supplier_id, key.campaign_id, key.period_from),
    )
    return [
        Billed(StatementKey(int(f), int(t), str(z), str(s), str(c)), str(lines), int(m), int(r))
        for f, t, z, s, c, lines, m, r in rows
    ]


async def log_mark(reader: Reader) -> int:
    """The verification log's last id (0 when empty): what a statement was counted at."""
    rows = await reader.read_rows("SELECT COALESCE(MAX(id), 0) FROM verification_log")
    return int(rows[0][0])


async def catalog(reader: Reader) -> CatalogState:
    """The catalog: active entries and retired campaigns (the version is not read: 0)."""
    rows = await reader.read_rows("SELECT kind, entry_id, doc, retired_at FROM catalog_entries")
    return catalog_of(rows, 0)


class Redecided(NamedTuple):
    """A valid play decided again since a mark: its line, key, status then and now."""

    line: tuple[str, str, str]
    play: tuple[str, str, int]
    then: str | None
    now: str | None


async def redecided(
    reader: Reader, start: int, end: int, filters: tuple[tuple[str, str], ...], since: int
) -> list[Redecided]:
    """Valid plays that started in [start, end) with a log entry after id `since`.

    `then` is the status of the play's last log entry up to `since` (None: none),
    `now` its verification in this snapshot. The log drives the read: only plays
    decided again are looked up, whatever the size of the period.
    """
    ph = placeholder(reader)
    key = "b.device_id = i.device_id AND b.journal_id = i.journal_id AND b.seq = i.seq"
    where = [f"i.start_ts >= {int(start)}", f"i.start_ts < {int(end)}", "i.status = 'valid'"]
    where += [f"i.{name} = {ph}" for name, _ in filters]
    sql = (
        "SELECT i.supplier_id, i.campaign_id, i.ad_group_id, i.device_id, i.journal_id, i.seq, "
        f"(SELECT b.status FROM verification_log b WHERE {key} AND b.id <= {ph} "
        "ORDER BY b.id DESC LIMIT 1), i.verification FROM impressions i "
        "JOIN (SELECT DISTINCT device_id, journal_id, seq FROM verification_log "
        f"WHERE id > {ph}) l ON l.device_id = i.device_id AND l.journal_id = i.journal_id "
        f"AND l.seq = i.seq WHERE {' AND '.join(where)}"
    )
    rows = await reader.read_rows(sql, (since, since, *(value for _, value in filters)))
    return [
        Redecided((str(s), str(c), str(g)), (str(d), str(j), int(q)), then, now)
        for s, c, g, d, j, q, then, now in rows
    ]
