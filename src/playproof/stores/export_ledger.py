"""The export ledger, shared by both stores: what an export takes, decides and records.

An export is made in one transaction, under its buyer's lock (SQLite's single
writer; a PostgreSQL advisory lock per buyer), so that two exports for one
buyer never take the same play:

1. the buyer's candidates are copied into a temporary table, in one statement,
   one snapshot. An incremental export (`since=last`) after a first one takes
   what is new since the previous: the plays the verification log shows
   verified after the log id that one recorded (up to the last id now,
   `Watermark`), and those it or a later export listed apart for a reason that
   can lift. Any other export reads every verified play not settled for the
   buyer (in the range), and lists apart at once those older than its window;
2. for Playout, the plays already filed on the candidates' frames around their
   times are loaded, so that a new play overlapping one of them is refused;
3. the candidates are read back in export order, a page at a time, decided by
   `playproof.exports.Classifier` and written to `export_plays` with their records.

The steps are written once, here, as a plan: a generator that yields what to
run (`Read`, `Probe`, `Execute`, `Insert`, `LoadCatalog`, `Watermark`) and
receives the answers. Each store runs a plan with its own driver
(`sqlite_exports`, `postgres_exports`), so the stores cannot decide
differently. Memory stays bounded by a page (and the buyer's window).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from playproof.exports import (
    DV360,
    OUTSIDE_WINDOW,
    PLAYOUT,
    WINDOW_MS,
    Books,
    Classifier,
    ExportPlay,
    Outcome,
    Refused,
    Rendered,
)
from playproof.stores.verdicts import CatalogState

if TYPE_CHECKING:
    # base names the types below in the Store protocol: a run-time import would be circular.
    from playproof.stores.base import Store

PAGE: Final = 2000
# Frames per query when loading the plays already filed on them.
FRAMES_PER_QUERY: Final = 500
PLAY_KEY: Final = ("start_ts", "device_id", "journal_id", "seq")
CANDIDATE_COLUMNS: Final = ExportPlay._fields
LEDGER_COLUMNS: Final = (
    "export_id",
    "buyer",
    "device_id",
    "journal_id",
    "seq",
    "start_ts",
    "end_ts",
    "slot",
    "reason",
    "settled",
    "record",
)
INFO_COLUMNS: Final = (
    "export_id",
    "buyer",
    "created_at",
    "since_last",
    "range_from",
    "range_to",
    "seller_id",
    "catalog_version",
    "plays",
    "skipped",
)


class ExportRequest(NamedTuple):
    """A new export: for a buyer, at `created_at`, of plays starting in [start, end)."""

    buyer: str
    created_at: int
    start: int | None = None
    end: int | None = None
    since_last: bool = True
    # DV360 only: the `parent` of each request is `sellers/<seller_id>`.
    seller_id: str | None = None


class ExportInfo(NamedTuple):
    """A recorded export: what was asked, and how many plays it contains and listed apart."""

    export_id: int
    buyer: str
    created_at: int
    since_last: bool
    start: int | None
    end: int | None
    seller_id: str | None
    catalog_version: int
    plays: int
    skipped: int


class Read(NamedTuple):
    """Run a query; answer its rows."""

    sql: str
    params: Sequence[Any] = ()


class Probe(NamedTuple):
    """Run a query that looks a few keys up in the ledger's index; answer its rows.

    A store's planner must never scan the ledger for it: the ledger only grows, and
    grows within an export's own transaction, where its statistics lag behind.
    """

    sql: str
    params: Sequence[Any] = ()


class Execute(NamedTuple):
    """Run a statement; answer how many rows it changed."""

    sql: str
    params: Sequence[Any] = ()


class Insert(NamedTuple):
    """Insert rows (LEDGER_COLUMNS) into export_plays; answer None."""

    rows: list[tuple[Any, ...]]


class LoadCatalog(NamedTuple):
    """Answer the catalog (CatalogState), read in the plan's transaction."""


class Watermark(NamedTuple):
    """Answer the verification log's last id: every row up to it committed and visible."""


Step = Read | Probe | Execute | Insert | LoadCatalog | Watermark
Plan = Generator[Step, Any, ExportInfo]


# --- SQL -----------------------------------------------------------------------------

_TEMP_COLUMNS: Final = (
    "device_id {text} NOT NULL, journal_id {text} NOT NULL, seq {int} NOT NULL, "
    "start_ts {int} NOT NULL, end_ts {int} NOT NULL, campaign_id {text} NOT NULL, "
    "content_id {text} NOT NULL, supplier_id {text} NOT NULL, store_id {text} NOT NULL, "
    "PRIMARY KEY (start_ts, device_id, journal_id, seq)"
)
# The candidates of one export. SQLite keeps the table on the writer's connection
# (emptied in each export's transaction); PostgreSQL drops it at commit.
TEMP_TABLE: Final = {
    "sqlite": (
        "CREATE TEMP TABLE IF NOT EXISTS export_candidates ("
        + _TEMP_COLUMNS.format(text="TEXT", int="INTEGER")
        + ") WITHOUT ROWID",
        "DELETE FROM temp.export_candidates",
    ),
    "postgres": (
        "CREATE TEMP TABLE export_candidates ("
        + _TEMP_COLUMNS.format(text='text COLLATE "C"', int="bigint")
        + ") ON COMMIT DROP",
    ),
}
CLEAR_TEMP: Final = {"sqlite": ("DELETE FROM temp.export_candidates",), "postgres": ()}


def placeholder(dialect: str) -> str:
    """The parameter placeholder of a dialect."""
    return "%s" if dialect == "postgres" else "?"


_COPY_CANDIDATES: Final = (
    f"INSERT INTO export_candidates ({', '.join(CANDIDATE_COLUMNS)}) "
    "SELECT i.device_id, i.journal_id, i.seq, i.start_ts, i.end_ts, i.campaign_id, "
    "i.content_id, i.supplier_id, COALESCE(d.store_id, '') "
)
_DEVICE_JOIN: Final = "LEFT JOIN devices d ON d.device_id = i.device_id"
_UNSETTLED: Final = (
    "i.verification = 'verified' AND NOT EXISTS (SELECT 1 FROM export_plays e WHERE e.buyer = "
    "{ph} AND e.settled = 1 AND e.device_id = i.device_id AND e.journal_id = i.journal_id "
    "AND e.seq = i.seq)"
)
# Impressions by key: PostgreSQL's are partitioned by start_ts, which impression_keys holds.
_BY_KEY: Final = {
    "sqlite": "JOIN impressions i ON i.device_id = n.device_id AND i.journal_id = n.journal_id "
    "AND i.seq = n.seq",
    "postgres": "JOIN impression_keys k ON k.device_id = n.device_id "
    "AND k.journal_id = n.journal_id AND k.seq = n.seq JOIN impressions i ON "
    "i.start_ts = k.start_ts AND i.device_id = k.device_id AND i.journal_id = k.journal_id "
    "AND i.seq = k.seq",
}
PREVIOUS_SQL: Final = (
    "SELECT export_id, log_id FROM exports WHERE buyer = {ph} AND since_last = 1 "
    "ORDER BY export_id DESC LIMIT 1"
)


def _range(request: ExportRequest) -> list[str]:
    where = []
    if request.start is not None:
        where.append(f"i.start_ts >= {int(request.start)}")
    if request.end is not None:
        where.append(f"i.start_ts < {int(request.end)}")
    return where


def candidates_sql(request: ExportRequest, ph: str, oldest: int) -> str:
    """Copy every verified play not settled for the buyer, in its window (and the range)."""
    where = [_UNSETTLED.format(ph=ph), f"i.start_ts >= {int(oldest)}", *_range(request)]
    return f"{_COPY_CANDIDATES}FROM impressions i {_DEVICE_JOIN} WHERE {' AND '.join(where)}"


def outside_window_sql(request: ExportRequest, oldest: int, ph: str) -> str:
    """List apart, as `outside_window` for good, every verified play not settled for the
    buyer that started before its window (in the range). Params: export id, buyer, buyer."""
    where = [_UNSETTLED.format(ph=ph), f"i.start_ts < {int(oldest)}", *_range(request)]
    return (
        f"INSERT INTO export_plays ({', '.join(LEDGER_COLUMNS)}) SELECT {ph}, {ph}, "
        "i.device_id, i.journal_id, i.seq, i.start_ts, i.end_ts, NULL, "
        f"'{OUTSIDE_WINDOW}', 1, NULL FROM impressions i WHERE {' AND '.join(where)}"
    )


def fresh_candidates_sql(dialect: str, ph: str) -> str:
    """Copy what is new since an incremental export: the plays verified since (by the log's
    ids, in (since, upto]) and those it or a later export listed apart, not for good.

    Params: since, upto, buyer, the export's id, buyer. Every other verified play was
    settled by that export or one before it (each incremental export takes them all).
    """
    fresh = (
        f"SELECT device_id, journal_id, seq FROM verification_log WHERE id > {ph} "
        f"AND id <= {ph} AND status = 'verified' UNION SELECT device_id, journal_id, seq "
        f"FROM export_plays WHERE buyer = {ph} AND settled = 0 AND export_id >= {ph}"
    )
    return (
        f"{_COPY_CANDIDATES}FROM ({fresh}) n {_BY_KEY[dialect]} {_DEVICE_JOIN} "
        f"WHERE {_UNSETTLED.format(ph=ph)}"
    )


def new_export_sql(ph: str) -> str:
    """Record a new export, with zero counts until its plays are in; answer its id."""
    names = (*INFO_COLUMNS[1:], "log_id")
    return (
        f"INSERT INTO exports ({', '.join(names)}) VALUES ({', '.join([ph] * len(names))}) "
        "RETURNING export_id"
    )


def page_sql(after: bool, ph: str) -> str:
    """One page of candidates in export order, after a key (or from the first)."""
    where = f" WHERE ({', '.join(PLAY_KEY)}) > ({', '.join([ph] * 4)})" if after else ""
    return (
        f"SELECT {', '.join(CANDIDATE_COLUMNS)} FROM export_candidates{where} "
        f"ORDER BY {', '.join(PLAY_KEY)} LIMIT {PAGE}"
    )


def device_ranges_sql(request: ExportRequest) -> str:
    """Per device, the span of its candidates a buyer may still take (start, end)."""
    oldest = request.created_at - WINDOW_MS[request.buyer]
    return (
        "SELECT device_id, MIN(start_ts), MAX(end_ts) FROM export_candidates "
        f"WHERE start_ts >= {int(oldest)} AND end_ts <= {int(request.created_at)} "
        "GROUP BY device_id"
    )


def filed_on_frames_sql(frames: int, ph: str) -> str:
    """Plays already filed with Playout on some frames, each ending after `lo`, starting before
    `hi`: the only ones a candidate there can overlap."""
    values = ", ".join([f"({ph}, CAST({ph} AS BIGINT), CAST({ph} AS BIGINT))"] * frames)
    return (
        f"WITH r (slot, lo, hi) AS (VALUES {values}) "
        "SELECT e.slot, e.start_ts, e.end_ts FROM r JOIN export_plays e "
        f"ON e.buyer = '{PLAYOUT}' AND e.slot = r.slot "
        "WHERE e.reason IS NULL AND e.end_ts > r.lo AND e.start_ts < r.hi"
    )


def filed_slots_sql(slots: int, ph: str) -> str:
    """Which of some DV360 slots already hold a play filed by an earlier export."""
    return (
        "SELECT DISTINCT slot FROM export_plays WHERE buyer = "
        f"'{DV360}' AND reason IS NULL AND slot IN ({', '.join([ph] * slots)})"
    )


FINISH_SQL: Final = "UPDATE exports SET plays = {ph}, skipped = {ph} WHERE export_id = {ph}"


# --- the plan ----------------------------------------------------------------------------


def plan_export(request: ExportRequest, dialect: str) -> Plan:
    """The steps of one export, in its transaction (under the buyer's lock)."""
    ph = placeholder(dialect)
    state: CatalogState = yield LoadCatalog()
    for sql in TEMP_TABLE[dialect]:
        yield Execute(sql)
    source = yield from _source(request, ph)
    r = request
    info = ExportInfo(0, r.buyer, r.created_at, r.since_last, r.start, r.end, r.seller_id,
                      state.version, plays=0, skipped=0)  # fmt: skip
    params = (*info[1:3], int(info.since_last), *info[4:], source.log_id)
    rows = yield Read(new_export_sql(ph), params)
    export_id = int(rows[0][0])
    outside = yield from _take_candidates(request, source, export_id, dialect, ph)
    books = Books(state.catalog, state.retired)
    classifier = Classifier(request.buyer, books, request.created_at, request.seller_id or "")
    if request.buyer == PLAYOUT:
        yield from _load_filed(classifier, request, ph)
    plays, skipped = yield from _decide_all(classifier, export_id, ph)
    skipped += outside
    yield Execute(FINISH_SQL.format(ph=ph), (plays, skipped, export_id))
    for sql in CLEAR_TEMP[dialect]:
        yield Execute(sql)
    return info._replace(export_id=export_id, plays=plays, skipped=skipped)


class _Source(NamedTuple):
    """Where an export's candidates come from, and the log id an incremental one records."""

    log_id: int | None
    # The log from the previous incremental export on: (its id, its log id, up to).
    since: tuple[int, int, int] | None


def _source(request: ExportRequest, ph: str) -> Generator[Step, Any, _Source]:
    if not request.since_last:
        return _Source(None, None)
    upto = int((yield Watermark()))
    previous = yield Read(PREVIOUS_SQL.format(ph=ph), (request.buyer,))
    if not previous or previous[0][1] is None:
        return _Source(upto, None)
    export_id, since = int(previous[0][0]), int(previous[0][1])
    return _Source(max(since, upto), (export_id, since, upto))


def _take_candidates(
    request: ExportRequest, source: _Source, export_id: int, dialect: str, ph: str
) -> Generator[Step, Any, int]:
    """Copy the candidates; the plays listed apart meanwhile (too old for the buyer)."""
    buyer = request.buyer
    if source.since is not None:
        # Only what changed since the previous incremental export: a scan of every verified
        # play would cost each export the whole history (and hold SQLite's writer meanwhile).
        previous, since, upto = source.since
        params = (since, upto, buyer, previous, buyer)
        yield Execute(fresh_candidates_sql(dialect, ph), params)
        return 0
    # The whole history (or range): what the buyer's window leaves out is listed apart in
    # one statement, so that only the window's plays are read, decided and held.
    oldest = request.created_at - WINDOW_MS[buyer]
    outside = yield Execute(outside_window_sql(request, oldest, ph), (export_id, buyer, buyer))
    yield Execute(candidates_sql(request, ph, oldest), (buyer,))
    return int(outside)


def frame_spans(ranges: Iterable[Sequence[Any]], books: Books) -> dict[str, tuple[int, int]]:
    """Per frame, the span its devices' candidates cover (devices without a frame left out)."""
    spans: dict[str, tuple[int, int]] = {}
    for device_id, lo, hi in ranges:
        frame = books.frame_of(device_id)
        if frame:
            was = spans.get(frame, (lo, hi))
            spans[frame] = (min(was[0], lo), max(was[1], hi))
    return spans


def _load_filed(
    classifier: Classifier, request: ExportRequest, ph: str
) -> Generator[Step, Any, None]:
    ranges = yield Read(device_ranges_sql(request))
    spans = sorted(frame_spans(ranges, classifier.books).items())
    for at in range(0, len(spans), FRAMES_PER_QUERY):
        part = spans[at : at + FRAMES_PER_QUERY]
        params = [v for frame, (lo, hi) in part for v in (frame, lo, hi)]
        filed = yield Probe(filed_on_frames_sql(len(part), ph), params)
        classifier.frames.load((str(f), int(s), int(e)) for f, s, e in filed)


def _decide_all(
    classifier: Classifier, export_id: int, ph: str
) -> Generator[Step, Any, tuple[int, int]]:
    plays = skipped = 0
    after: tuple[Any, ...] = ()
    while True:
        page = yield Read(page_sql(bool(after), ph), after)
        if not page:
            return plays, skipped
        candidates = [ExportPlay(*row) for row in page]
        outcomes = yield from _decide(classifier, candidates, ph)
        rows = [
            ledger_row(export_id, classifier.buyer, p, o)
            for p, o in zip(candidates, outcomes, strict=True)
        ]
        yield Insert(rows)
        contained = sum(1 for o in outcomes if isinstance(o, Rendered))
        plays, skipped = plays + contained, skipped + len(outcomes) - contained
        last = candidates[-1]
        after = (last.start_ts, last.device_id, last.journal_id, last.seq)


def _decide(
    classifier: Classifier, candidates: list[ExportPlay], ph: str
) -> Generator[Step, Any, list[Outcome]]:
    rendered = [classifier.render(play) for play in candidates]
    filed: set[str] = set()
    if classifier.buyer == DV360:
        slots = sorted({r.slot for r in rendered if isinstance(r, Rendered)})
        if slots:
            found = yield Probe(filed_slots_sql(len(slots), ph), slots)
            filed = {str(row[0]) for row in found}
    return [
        classifier.admit(play, r, r.slot in filed) if isinstance(r, Rendered) else r
        for play, r in zip(candidates, rendered, strict=True)
    ]


def ledger_row(export_id: int, buyer: str, play: ExportPlay, outcome: Outcome) -> tuple[Any, ...]:
    """A play's row of export_plays (LEDGER_COLUMNS)."""
    key = (export_id, buyer, play.device_id, play.journal_id, play.seq, play.start_ts, play.end_ts)
    if isinstance(outcome, Refused):
        return (*key, None, outcome.text, int(outcome.final), None)
    return (*key, outcome.slot, None, 1, outcome.record)


# --- reading the ledger --------------------------------------------------------------------


def _ph(store: Store) -> str:
    return placeholder(store.dialect)


async def export_info(store: Store, export_id: int) -> ExportInfo | None:
    """A recorded export, or None."""
    sql = f"SELECT {', '.join(INFO_COLUMNS)} FROM exports WHERE export_id = {_ph(store)}"
    rows = await store.read_rows(sql, (export_id,))
    if not rows:
        return None
    row = rows[0]
    return ExportInfo(
        int(row[0]), str(row[1]), int(row[2]), bool(row[3]), *row[4:7], *map(int, row[7:])
    )


def export_records(
    store: Store, export_id: int, chunk: int = 5000
) -> AsyncGenerator[list[tuple[Any, ...]], None]:
    """The records an export contains, in export order, from one snapshot: rows of (record,)."""
    sql = (
        f"SELECT record FROM export_plays WHERE export_id = {_ph(store)} AND reason IS NULL "
        f"ORDER BY {', '.join(PLAY_KEY)}"
    )
    return store.stream_rows(sql, (export_id,), chunk)


SKIPPED_COLUMNS: Final = (
    "device_id",
    "journal_id",
    "seq",
    "start_ts",
    "end_ts",
    "reason",
    "settled",
)


def skipped_rows(
    store: Store, export_id: int, chunk: int = 5000
) -> AsyncGenerator[list[tuple[Any, ...]], None]:
    """The plays an export listed apart, in export order (SKIPPED_COLUMNS)."""
    sql = (
        f"SELECT {', '.join(SKIPPED_COLUMNS)} FROM export_plays WHERE export_id = {_ph(store)} "
        f"AND reason IS NOT NULL ORDER BY {', '.join(PLAY_KEY)}"
    )
    return store.stream_rows(sql, (export_id,), chunk)


async def reason_counts(store: Store, export_id: int) -> dict[str, int]:
    """Plays an export listed apart, per reason (a play refused for several counts under each)."""
    sql = (
        f"SELECT reason, COUNT(*) FROM export_plays WHERE export_id = {_ph(store)} "
        "AND reason IS NOT NULL GROUP BY reason"
    )
    counts: dict[str, int] = {}
    for reasons, n in await store.read_rows(sql, (export_id,)):
        for reason in str(reasons).split(","):
            counts[reason] = counts.get(reason, 0) + int(n)
    return dict(sorted(counts.items()))
