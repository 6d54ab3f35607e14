"""Buyer exports benchmark: rows per second of each export, beside the plain impression CSV.

    .venv/bin/python bench/exports.py                          # 200k plays on SQLite
    .venv/bin/python bench/exports.py --rows 1000000 --store postgres

It commits `--rows` plays of a fleet (each screen a loop of 15 to 30 s spots,
back to back, over the 2.5 days before the export; every screen with its own
frame and ad unit, so both buyers take every play) through `Store.commit`,
registers the screens and imports a catalog naming every external id, then
marks the plays verified, and logs them so, in two statements (the verifier's own speed
is bench/verify.py's subject). Then, in this process, on the same store:

- the reference: the impression CSV export of the same (verified) plays,
  `GET /v1/impressions?verification=verified&format=csv`'s body, read whole;
- a new UK Playout export (`since=last`): making it (reading, deciding and
  recording every play in the ledger) and streaming its file, timed apart;
- the same Playout export again by its id (streaming the recorded file);
- a new DV360 export and its re-export, the same way;
- then 10,000 plays of two more screens arrive: the next `since=last` export of each
  buyer, which finds them among everything already exported (the incremental case).

Each line prints rows per second and the bytes written. PostgreSQL runs in a
schema of its own, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import tempfile
import time
from collections.abc import AsyncGenerator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from playproof.catalog import Catalog, Change, parse_catalog
from playproof.catalog_merge import merge
from playproof.protocol import Record
from playproof.rules import Verdict
from playproof.server import exports, reports
from playproof.stores import open_store
from playproof.stores.base import BatchWrite, DeviceInfo, Judged, Store

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
NOW = int(datetime(2026, 12, 2, 12, tzinfo=UTC).timestamp() * 1000)
SPAN_MS = int(2.5 * 86_400_000)  # within DV360's 3 days: both buyers take every play
PLAYS_PER_SCREEN = 9_000  # about 2.4 days of 15 to 30 s spots
BATCH, GROUP = 1000, 20
LATE_SCREENS, LATE_PLAYS = 2, 5_000
VALID = Verdict(None, "valid", 100, ())


def screen_plays(screen: int, count: int) -> Iterator[Record]:
    """One screen's plays, back to back, ending before NOW."""
    rng = random.Random(screen)
    at = NOW - SPAN_MS
    for seq in range(1, count + 1):
        length = rng.choice((15_000, 20_000, 25_000, 30_000))
        content = rng.randrange(20)
        yield Record(
            v=1,
            device_id=f"scr-{screen:05d}",
            journal_id="j-1",
            seq=seq,
            campaign_id=f"cmp-{content % 5}",
            ad_group_id="ag-1",
            content_id=f"cnt-{content:02d}",
            store_id="store-1",
            supplier_id="sup-1",
            start_ts=at,
            end_ts=at + length,
            duration_ms=length,
            expected_ms=length,
            end_reason="completed",
            clock_offset_ms=0,
            clock_synced=True,
            screenshot_sha256=None,
            screenshot_at_ms=None,
            checksum=f"{screen:08x}{seq:056x}",
        )
        at += length + 500


def catalog_doc(screens: int) -> dict[str, Any]:
    """Every screen with its frame and ad unit; every content and campaign with its ids."""
    campaign_ids = {"order": "ord-{}", "line": "line-{}", "spacebuyerid": "100{}"}
    return {
        "suppliers": [
            {"supplier_id": "sup-1", "currency": "GBP", "external_ids": {"spacebrandid": "4021"}}
        ],
        "stores": [{"store_id": "store-1", "time_zone": "Europe/London"}],
        "devices": [
            {
                "device_id": f"scr-{s:05d}",
                "external_ids": {"frame_id": f"{1_000_000_000 + s}", "ad_unit": f"au-{s}"},
            }
            for s in range(screens)
        ],
        "contents": [
            {
                "content_id": f"cnt-{c:02d}",
                "expected_ms": 30_000,
                "name": f"spot {c}, winter",
                "external_ids": {"creative": f"cr-{c}"},
            }
            for c in range(20)
        ],
        "campaigns": [
            {
                "campaign_id": f"cmp-{k}",
                "supplier_id": "sup-1",
                "flight": {"from": "2026-11-01", "to": "2027-01-01"},
                "ad_groups": [
                    {"ad_group_id": "ag-1", "contents": [f"cnt-{c:02d}" for c in range(20)]}
                ],
                "price": {"model": "cpm", "amount": "12.5", "currency": "GBP"},
                "impressions_per_play": {"multiplier": "2.75"},
                "external_ids": {key: value.format(k) for key, value in campaign_ids.items()},
            }
            for k in range(5)
        ],
    }


async def commit(store: Store, screens: range, per_screen: int, rows: int) -> None:
    """Commit the screens' plays (registering them) in groups of batches, as the service would."""
    group: list[BatchWrite] = []
    for screen in screens:
        await store.add_device(
            DeviceInfo(f"scr-{screen:05d}", "store-1", NOW - SPAN_MS, None), f"h-{screen}"
        )
        count = min(per_screen, rows - (screen - screens.start) * per_screen)
        plays = list(screen_plays(screen, count))
        for at in range(0, len(plays), BATCH):
            records = plays[at : at + BATCH]
            received = records[-1].end_ts + 500
            judged = [Judged(r, VALID) for r in records]
            group.append(BatchWrite(records[0].device_id, received, received, judged))
            if len(group) == GROUP:
                await store.commit(group)
                group = []
    if group:
        await store.commit(group)


async def load(store: Store, rows: int) -> int:
    """Commit the fleet's plays and import the catalog (naming the late screens too); screens."""
    screens = max(1, -(-rows // PLAYS_PER_SCREEN))
    await commit(store, range(screens), PLAYS_PER_SCREEN, rows)
    incoming = parse_catalog(json.dumps(catalog_doc(screens + LATE_SCREENS)).encode())

    def update(current: Catalog) -> tuple[Catalog, list[Change]]:
        return merge(current, incoming, False)

    await store.update_catalog(update, NOW - SPAN_MS)
    return screens


def mark_verified(url: str) -> None:
    """Every valid play not yet verified verified, and logged so (as the verifier would log
    it: incremental exports follow the log): a benchmark shortcut past the verifier."""
    statements = (
        "INSERT INTO verification_log (device_id, journal_id, seq, at, status, reasons, cause) "
        "SELECT device_id, journal_id, seq, 0, 'verified', '', 'bench' FROM impressions "
        "WHERE status = 'valid' AND verification = 'pending'",
        "UPDATE impressions SET verification = 'verified' "
        "WHERE status = 'valid' AND verification = 'pending'",
    )
    if url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            for sql in statements:
                conn.execute(sql)
    else:
        with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
            for sql in statements:
                conn.execute(sql.encode())


async def drain(body: AsyncGenerator[bytes, None]) -> int:
    """Read a body to its end, as a client would; its bytes."""
    size = 0
    async for piece in body:
        size += len(piece)
    return size


def line(what: str, rows: int, seconds: float, size: int | None = None) -> None:
    rate = rows / seconds if seconds else float("inf")
    extra = f"  {size / 1e6:8.1f} MB" if size is not None else ""
    print(f"  {what:<46} {rows:>9,} rows {seconds:7.2f} s {rate:>11,.0f} rows/s{extra}")


async def measure(store: Store, rows: int) -> None:
    started = time.perf_counter()
    size = await drain(reports.export_body(store, {"verification": "verified"}, "csv"))
    line("reference: impression CSV (verified plays)", rows, time.perf_counter() - started, size)
    for buyer in ("playout", "dv360"):
        started = time.perf_counter()
        info, body = await exports.open_export(store, buyer, {"since": "last"}, NOW, "8675309")
        made = time.perf_counter()
        size = await drain(body)
        done = time.perf_counter()
        assert info.plays == rows, f"{buyer}: {info.plays} of {rows} plays ({info.skipped} apart)"
        line(f"{buyer}: new export, made (ledger)", info.plays, made - started)
        line(f"{buyer}: new export, streamed", info.plays, done - made, size)
        line(f"{buyer}: new export, made and streamed", info.plays, done - started, size)
        started = time.perf_counter()
        _, body = await exports.open_export(store, buyer, {"export_id": str(info.export_id)}, NOW)
        again = await drain(body)
        assert again == size
        line(f"{buyer}: the same export again by id", info.plays, time.perf_counter() - started)


async def incremental(store: Store, url: str, screens: int) -> None:
    """Plays of two more screens, then each buyer's next export: only they are new."""
    late = LATE_SCREENS * LATE_PLAYS
    await commit(store, range(screens, screens + LATE_SCREENS), LATE_PLAYS, late)
    mark_verified(url)
    for buyer in ("playout", "dv360"):
        started = time.perf_counter()
        info, body = await exports.open_export(store, buyer, {"since": "last"}, NOW, "8675309")
        size = await drain(body)
        assert info.plays == late, f"{buyer}: {info.plays} of {late} new plays"
        line(f"{buyer}: next export, {late:,} new plays", late, time.perf_counter() - started, size)


async def run(url: str, rows: int) -> None:
    store = open_store(url, Path(tempfile.gettempdir()) / "pp-bench-exports-blobs")
    await store.open()
    try:
        started = time.perf_counter()
        screens = await load(store, rows)
        print(
            f"loaded {rows:,} plays of {screens} screens in {time.perf_counter() - started:.1f} s"
        )
    finally:
        await store.close()
    mark_verified(url)
    store = open_store(url, Path(tempfile.gettempdir()) / "pp-bench-exports-blobs")
    await store.open()
    try:
        await measure(store, rows)
        await incremental(store, url, screens)
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()
    if args.store == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            print(f"SQLite, {args.rows:,} verified plays")
            asyncio.run(run(f"sqlite:///{folder}/bench.db", args.rows))
        return
    schema = f"pp_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}".encode())
    try:
        print(f"PostgreSQL, {args.rows:,} verified plays")
        asyncio.run(run(f"{PG_URL}?options=-csearch_path%3D{schema}", args.rows))
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE".encode())


if __name__ == "__main__":
    main()
