"""The operators' answers: query parameters in, tables of plain values out.

The HTTP routes (`app.py`) and the CLI (`playproof report ...`) both call these,
so that a table printed in a terminal is the one the API gives. Parsing is in
`params`, SQL in `stores/queries`, body formats in `formats`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Final, NamedTuple, cast

import msgspec
from starlette.datastructures import QueryParams

from playproof.errors import NotFound, ProtocolError
from playproof.protocol import MAX_INT
from playproof.rules import HOUR_MS, Policy
from playproof.server import health
from playproof.server.formats import day_label, rfc3339, seconds, stream_body
from playproof.server.metrics import Metrics
from playproof.server.params import (
    Params,
    decode_cursor,
    digest,
    encode_cursor,
    group_by,
    id_value,
    time_range,
    zone,
)
from playproof.stores import queries
from playproof.stores.base import Store
from playproof.stores.rollup import DIMENSIONS

Query = QueryParams | Mapping[str, str]

PAGE_DEFAULT: Final = 100
PAGE_MAX: Final = 1000
DAY_MS: Final = 24 * HOUR_MS


class Table(NamedTuple):
    """Columns and rows of plain values, with what else the answer says."""

    columns: tuple[str, ...]
    rows: list[list[Any]]
    meta: dict[str, Any]

    def records(self) -> list[dict[str, Any]]:
        """The rows as objects keyed by column."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


# --- impressions ----------------------------------------------------------------

_RENAMED = {
    "duration_ms": "duration_s",
    "expected_ms": "expected_s",
    "clock_offset_ms": "clock_offset_s",
    "screenshot_at_ms": "screenshot_at_s",
    "skew_ms": "skew_s",
}
IMPRESSION_FIELDS: Final = tuple(_RENAMED.get(c, c) for c in queries.LISTED_COLUMNS)
_I = {name: i for i, name in enumerate(queries.LISTED_COLUMNS)}
_TIMES = [_I[c] for c in ("start_ts", "end_ts", "received_at")]
_DURATIONS = [_I[c] for c in _RENAMED]
_SYNCED, _FLAGS, _REASONS = _I["clock_synced"], _I["flags"], _I["verification_reasons"]
IMPRESSION_PARAMS: Final = (
    "from",
    "to",
    *queries.IMPRESSION_FILTERS,
    "limit",
    "cursor",
    "format",
)
_KEY_SHAPE = (int, str, str, int)


def impression_values(row: tuple[Any, ...]) -> list[Any]:
    """A stored impression as operators see it: RFC 3339 times, seconds, flags as a list."""
    values = list(row)
    for i in _TIMES:
        values[i] = rfc3339(values[i])
    for i in _DURATIONS:
        value = values[i]
        values[i] = None if value is None else value / 1000
    values[_SYNCED] = bool(values[_SYNCED])
    values[_FLAGS] = values[_FLAGS].split(",") if values[_FLAGS] else []
    values[_REASONS] = values[_REASONS].split(",") if values[_REASONS] else []
    return values


class ImpressionOut(msgspec.Struct):
    """An impression as operators see it (the NDJSON export encodes these directly)."""

    device_id: str
    journal_id: str
    seq: int
    campaign_id: str
    ad_group_id: str
    content_id: str
    store_id: str
    supplier_id: str
    start_ts: str | None
    end_ts: str | None
    duration_s: float | None
    expected_s: float | None
    end_reason: str
    clock_offset_s: float | None
    clock_synced: bool
    screenshot_sha256: str | None
    screenshot_at_s: float | None
    checksum: str
    status: str
    quality: int
    flags: list[str]
    verification: str | None
    verification_reasons: list[str]
    received_at: str | None
    skew_s: float | None


assert ImpressionOut.__struct_fields__ == IMPRESSION_FIELDS
_encoder = msgspec.json.Encoder()


_texts: dict[int, str] = {}


def _secs(ms: int) -> str:
    """Milliseconds as seconds text; durations repeat, so the text is kept."""
    text = _texts.get(ms)
    if text is None:
        if len(_texts) > 100_000:
            _texts.clear()
        text = _texts[ms] = str(ms / 1000)
    return text


def csv_line(row: tuple[Any, ...]) -> str:
    """One impression (queries.CSV_COLUMNS) as a CSV line, fast: only its reasons need quoting."""
    # Every other text field is a protocol id, an enum, hex or a flag name (checked at
    # ingest), none of which may hold a comma, a quote or a line break.
    (ids, start, end, dur, exp, why, off, synced, sha, at) = row[:10]
    (checksum, status, quality, flags, verification, reasons, received, skew) = row[10:]
    shot_at = "" if at is None else _secs(at)
    # Reasons as stored, comma-separated: quoted when there are several (CSV's own rule).
    reasons = f'"{reasons}"' if reasons and "," in reasons else reasons or ""
    return (
        f"{ids},{rfc3339(start)},{rfc3339(end)},"
        f"{_secs(dur)},{_secs(exp)},{why},{_secs(off)},{'true' if synced else 'false'},"
        f"{sha or ''},{shot_at},{checksum},{status},{quality},{flags.replace(',', ';')},"
        f"{verification or ''},{reasons},{rfc3339(received)},{_secs(skew)}\n"
    )


def csv_rows(rows: list[tuple[Any, ...]]) -> bytes:
    """Stored impressions as CSV lines."""
    return "".join([csv_line(row) for row in rows]).encode()


def ndjson_rows(rows: list[tuple[Any, ...]]) -> bytes:
    """Stored impressions as JSON objects, one a line."""
    return _encoder.encode_lines([ImpressionOut(*impression_values(row)) for row in rows])


def export_body(store: Store, query: Query, kind: str) -> AsyncGenerator[bytes, None]:
    """A streamed export of the impressions a request asks for: CSV or NDJSON."""
    if kind == "csv":
        chunks = impressions_export(store, query, queries.CSV_COLUMNS)
        return stream_body((",".join(IMPRESSION_FIELDS) + "\n").encode(), chunks, csv_rows)
    return stream_body(b"", impressions_export(store, query), ndjson_rows)


def impression_query(query: Query, paged: bool) -> tuple[queries.ImpressionQuery, str]:
    """The impressions a request asks for, and the fingerprint its cursors carry."""
    params = Params(query, IMPRESSION_PARAMS)
    start, end = time_range(params)
    filters = params.ids(queries.IMPRESSION_FILTERS)
    fingerprint = digest([start, end, filters])
    after = None
    cursor = params.get("cursor")
    if cursor is not None:
        after = tuple(decode_cursor(cursor, fingerprint, _KEY_SHAPE))
    if paged:
        limit: int | None = params.limit(PAGE_DEFAULT, PAGE_MAX)
    else:
        limit = params.limit(MAX_INT, MAX_INT) if params.get("limit") is not None else None
    key = cast("tuple[int, str, str, int] | None", after)
    return queries.ImpressionQuery(start, end, filters, key, limit), fingerprint


async def impressions_page(store: Store, query: Query) -> dict[str, Any]:
    """One page of impressions and the cursor of the next (None on the last page)."""
    wanted, fingerprint = impression_query(query, paged=True)
    rows = await queries.impressions(store, wanted)
    cursor = None
    if rows and len(rows) == wanted.limit:
        last = rows[-1]
        key = [last[_I["start_ts"]], last[_I["device_id"]], last[_I["journal_id"]], last[_I["seq"]]]
        cursor = encode_cursor(key, fingerprint)
    items = [dict(zip(IMPRESSION_FIELDS, impression_values(r), strict=True)) for r in rows]
    for item in items:
        item["screenshot_url"] = screenshot_url(item)
    return {"impressions": items, "next_cursor": cursor}


def screenshot_url(item: Mapping[str, Any]) -> str | None:
    """The route of an impression's screenshot, if it names one."""
    if not item.get("screenshot_sha256"):
        return None
    return f"/v1/impressions/{item['device_id']}/{item['journal_id']}/{item['seq']}/screenshot"


def impressions_export(
    store: Store, query: Query, columns: tuple[str, ...] = queries.LISTED_COLUMNS
) -> AsyncGenerator[list[tuple[Any, ...]], None]:
    """Every impression a request asks for, in chunks of rows (for a streamed export)."""
    wanted, _ = impression_query(query, paged=False)
    return queries.export_impressions(store, wanted, columns)


async def screenshot(store: Store, device_id: str, journal_id: str, seq: str) -> tuple[bytes, str]:
    """An impression's proof screenshot and its media type; NotFound when there is none yet."""
    key = (id_value("device_id", device_id), id_value("journal_id", journal_id))
    if not (seq.isascii() and seq.isdigit()) or not 1 <= int(seq) <= MAX_INT:
        raise ProtocolError(f"expected a sequence number from 1 in the path, got {seq[:40]!r}")
    found = await queries.screenshot_of(store, *key, int(seq))
    if found is None:
        raise NotFound(f"no impression {device_id}/{journal_id}/{seq} is stored")
    sha, media = found
    # Off the event loop: a slow disk must not stall every other request.
    data = await asyncio.to_thread(store.blobs.read, sha) if sha else None
    if sha is None:
        raise NotFound(f"impression {device_id}/{journal_id}/{seq} names no screenshot")
    if data is None or media is None:
        raise NotFound(f"the screenshot {sha} of this impression has not been uploaded (yet)")
    return data, media


# --- delivery -------------------------------------------------------------------

DELIVERY_PARAMS: Final = ("from", "to", "tz", "group_by", *DIMENSIONS, "format")
DELIVERY_SUMS: Final = ("plays", "valid", "partial", "played_s", "mean_quality")


def group_label(name: str, value: Any) -> Any:
    """A group's value as shown: an hour as RFC 3339, a day as its date, the rest as is."""
    if name == "hour":
        return rfc3339(value)
    return day_label(value) if name == "day" else value


def delivery_query(query: Query) -> tuple[queries.DeliveryQuery, str]:
    """The report a request asks for, and the name of its time zone."""
    return period_query(query, DELIVERY_PARAMS, queries.GROUPS, DIMENSIONS)


def period_query(
    query: Query, allowed: Sequence[str], groups: Sequence[str], dimensions: Sequence[str]
) -> tuple[queries.DeliveryQuery, str]:
    """A report over a required period in a zone, grouped and filtered by the names given."""
    params = Params(query, tuple(allowed))
    tz = zone(params.get("tz"))
    start, end = time_range(params, tz, required=True)
    assert start is not None and end is not None
    wanted_groups = group_by(params.get("group_by"), tuple(groups))
    wanted = queries.DeliveryQuery(start, end, wanted_groups, params.ids(tuple(dimensions)), tz)
    return wanted, params.get("tz") or "UTC"


def delivery_values(row: queries.DeliveryRow, groups: tuple[str, ...]) -> list[Any]:
    """One report row: its group values, then plays, valid, partial, played_s, mean_quality."""
    labels = [group_label(name, value) for name, value in zip(groups, row.key, strict=True)]
    mean = round(row.quality_sum / row.plays, 2) if row.plays else None
    partial = row.plays - row.valid
    return [*labels, row.plays, row.valid, partial, seconds(row.played_ms), mean]


async def delivery(store: Store, query: Query) -> Table:
    """The delivery report: plays, valid and partial, played seconds, mean quality per group."""
    wanted, tz_name = delivery_query(query)
    rows = await queries.delivery(store, wanted)
    plays = sum(r.plays for r in rows)
    totals = {
        "plays": plays,
        "valid": sum(r.valid for r in rows),
        "partial": plays - sum(r.valid for r in rows),
        "played_s": seconds(sum(r.played_ms for r in rows)),
        "mean_quality": round(sum(r.quality_sum for r in rows) / plays, 2) if plays else None,
    }
    meta = {
        "from": rfc3339(wanted.start),
        "to": rfc3339(wanted.end),
        "tz": tz_name,
        "group_by": list(wanted.group_by),
        "totals": totals,
    }
    columns = (*wanted.group_by, *DELIVERY_SUMS)
    return Table(columns, [delivery_values(r, wanted.group_by) for r in rows], meta)


# --- rejects --------------------------------------------------------------------

REJECT_PARAMS: Final = ("from", "to", "reason", "device_id", "limit", "cursor", "format")
REJECT_FIELDS: Final = tuple(queries.REJECT_COLUMNS)
REJECT_GROUPS: Final = ("reason", "device_id", "hour", "day")
REJECT_COUNT_PARAMS: Final = ("from", "to", "tz", "group_by", "reason", "device_id", "format")


def _reject_filters(params: Params) -> queries.Filters:
    # A reject's `device_id` may be absent or another device's: filter on who sent it.
    return tuple(
        ("submitted_by" if name == "device_id" else name, value)
        for name, value in params.ids(("reason", "device_id"))
    )


async def rejects_page(store: Store, query: Query) -> dict[str, Any]:
    """Rejected records, newest first, a page at a time, by reason, device and time received."""
    params = Params(query, REJECT_PARAMS)
    start, end = time_range(params)
    filters = _reject_filters(params)
    fingerprint = digest([start, end, filters])
    cursor = params.get("cursor")
    before = decode_cursor(cursor, fingerprint, (int,))[0] if cursor is not None else None
    limit = params.limit(PAGE_DEFAULT, PAGE_MAX)
    rows = await queries.rejects(store, queries.RejectQuery(start, end, filters, before, limit))
    items = [dict(zip(REJECT_FIELDS, row, strict=True)) for row in rows]
    for item in items:
        item["sent_at"], item["received_at"] = (
            rfc3339(item["sent_at"]),
            rfc3339(item["received_at"]),
        )
    after = encode_cursor([rows[-1][0]], fingerprint) if len(rows) == limit else None
    return {"rejects": items, "next_cursor": after}


async def reject_counts(store: Store, query: Query, now: int) -> Table:
    """Rejects counted per group (`reason`, `device_id`, `hour`, `day`): records and times."""
    params = Params(query, REJECT_COUNT_PARAMS)
    tz = zone(params.get("tz"))
    start, end = time_range(params, tz, default_ms=DAY_MS)
    start = now - DAY_MS if start is None else start
    end = max(now + 1, start + 1) if end is None else end
    chosen = params.get("group_by")
    groups = group_by("reason" if chosen is None else chosen, REJECT_GROUPS)
    columns = ["submitted_by" if g == "device_id" else g for g in groups]
    wanted = queries.RejectQuery(start, end, _reject_filters(params))
    rows = await queries.reject_counts(store, wanted, columns, tz)
    values = [
        [*(group_label(g, v) for g, v in zip(groups, row, strict=False)), *row[len(groups) :]]
        for row in rows
    ]
    meta = {"from": rfc3339(start), "to": rfc3339(end), "tz": params.get("tz") or "UTC"}
    return Table((*groups, "records", "times"), values, meta)


# --- devices --------------------------------------------------------------------

_DEVICE_TIMES: Final = (
    "created_at",
    "revoked_at",
    "last_seen",
    "last_status_at",
    "last_sync_at",
    "oldest_queued_at",
)


def _device_view(summary: dict[str, Any]) -> dict[str, Any]:
    view = dict(summary)
    for name in _DEVICE_TIMES:
        view[name] = rfc3339(view.get(name))
    for journal in view.get("journals", []):
        journal["first_seen"] = rfc3339(journal["first_seen"])
        journal["last_seen"] = rfc3339(journal["last_seen"])
    return view


DEVICE_PARAMS: Final = ("format", "limit", "cursor")


async def devices_page(
    store: Store,
    query: Query,
    now: int,
    policy: Policy,
    refused: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """A page of device health summaries by id (`limit`, `cursor`), and the next cursor.

    `refused`: the running service's screenshot refusals today, per device.
    """
    params = Params(query, DEVICE_PARAMS)
    fingerprint = digest(["devices"])
    cursor = params.get("cursor")
    after = decode_cursor(cursor, fingerprint, (str,))[0] if cursor is not None else None
    limit = params.limit(PAGE_DEFAULT, PAGE_MAX)
    found, resume = await health.fleet_page(store, now, policy, refused, after=after, limit=limit)
    following = encode_cursor([resume], fingerprint) if resume is not None else None
    return {"devices": [_device_view(s) for s in found], "next_cursor": following}


async def devices(
    store: Store,
    query: Query,
    now: int,
    policy: Policy,
    refused: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Every device's health summary, by id: the CSV and NDJSON exports, which page nothing.

    `refused`: the running service's screenshot refusals today, per device. `limit` and
    `cursor` page JSON only; on an export they are still checked, so that a request the
    document calls wrong is answered 400 whatever its format.
    """
    params = Params(query, DEVICE_PARAMS)
    cursor = params.get("cursor")
    if cursor is not None:
        decode_cursor(cursor, digest(["devices"]), (str,))
    if params.get("limit") is not None:
        params.limit(PAGE_DEFAULT, PAGE_MAX)
    return [_device_view(s) for s in await health.fleet(store, now, policy, refused)]


async def device(
    store: Store, device_id: str, now: int, policy: Policy, refused: int = 0
) -> dict[str, Any]:
    """One device's health in full."""
    id_value("device_id", device_id)
    return _device_view(await health.device_detail(store, device_id, now, policy, refused))


DEVICE_COLUMNS: Final = (
    "device_id",
    "store_id",
    "last_seen",
    "last_skew_ms",
    "clock_state",
    "drift_ppm",
    "queue_depth",
    "evicted_total",
    "high_water",
    "open_gaps",
    "lost",
    "resets",
    "restarts",
    "problems",
)


def device_table(views: list[dict[str, Any]]) -> Table:
    """The fleet as a table (for CSV and the terminal)."""
    rows = [[v[c] for c in DEVICE_COLUMNS] for v in views]
    return Table(DEVICE_COLUMNS, rows, {})


# --- live -----------------------------------------------------------------------

LIVE_PARAMS: Final = ("seconds", "step")


def _bounded(params: Params, name: str, default: int, low: int, high: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        raise ProtocolError(f"expected `{name}` from {low} to {high}, got {value[:40]!r}")
    return int(value)


def live(metrics: Metrics, query: Query, now: int) -> dict[str, Any]:
    """Records answered per `step` seconds over the last `seconds`, by result, and the gauges."""
    params = Params(query, LIVE_PARAMS)
    span = _bounded(params, "seconds", 300, 10, 3600)
    step = _bounded(params, "step", 5, 1, 300)
    sample = metrics.registry.get_sample_value
    return {
        "now": rfc3339(now),
        **metrics.live.series(span, step),
        "connections": int(sample("playproof_stream_connections") or 0),
        "queued": int(sample("playproof_device_queued_records") or 0),
    }
