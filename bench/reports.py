"""Reports benchmark: a month of impressions through the stores' own commit path, then reads.

    .venv/bin/python bench/reports.py                        # 10M rows, SQLite and PostgreSQL
    .venv/bin/python bench/reports.py --rows 1000000 --store sqlite --keep /tmp/pp-bench

It builds a month (October 2026, UTC) of plays from a fleet of screens (each
plays a loop of its own twelve spots, 15 to 30 s each, 08:00 to 22:00) and
commits them with `Store.commit` in groups of 20 batches of 1000, as the group
committer would: the rollups are maintained exactly as in production. Then it
starts a real `playproof serve` on that database and times, over HTTP with an
operator token, the delivery report for the month grouped by campaign and day
(and a few other shapes), and streamed CSV and NDJSON exports of 1M rows. The
report's totals are checked against a count of the rows.
PostgreSQL runs in a schema of its own, dropped at the end unless --keep.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from playproof.protocol import Record
from playproof.rules import Verdict
from playproof.server.operators import add_operator
from playproof.stores import open_store
from playproof.stores.base import BatchWrite, Judged, Store

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
MONTH_START = int(datetime(2026, 10, 1, tzinfo=UTC).timestamp() * 1000)
DAY_MS = 86_400_000
DAYS = 31
BATCH = 1000
GROUP = 20
OPEN_MS, CLOSE_MS = 8 * 3_600_000, 22 * 3_600_000
VALID = Verdict(None, "valid", 100, ())
PARTIAL = Verdict(None, "partial", 100, ())


def fleet_size(rows: int) -> int:
    """Screens needed for `rows` plays in a month (about 1,680 a day each)."""
    return max(1, rows // (DAYS * 1_680))


def device_plays(device: int, rows: int, rng: random.Random) -> Iterator[Record]:
    """One screen's month: its loop of spots, back to back in opening hours, in order."""
    spots = [rng.randrange(200) for _ in range(12)]
    day, at, seq = 0, OPEN_MS, 0
    while seq < rows:
        content = spots[seq % len(spots)]
        expected = 15_000 + 5_000 * (content % 4)
        skipped = rng.random() < 0.08
        played = rng.randrange(1_000, expected) if skipped else expected
        start = MONTH_START + day * DAY_MS + at
        seq += 1
        yield Record(
            v=1,
            device_id=f"scr-{device:04d}",
            journal_id="j-1",
            seq=seq,
            campaign_id=f"cmp-{content % 50:02d}",
            ad_group_id=f"ag-{content % 100:03d}",
            content_id=f"cnt-{content:03d}",
            store_id=f"store-{device % 50:02d}",
            supplier_id=f"sup-{content % 20:02d}",
            start_ts=start,
            end_ts=start + played,
            duration_ms=played,
            expected_ms=expected,
            end_reason="skipped" if skipped else "completed",
            clock_offset_ms=0,
            clock_synced=True,
            screenshot_sha256=None,
            screenshot_at_ms=None,
            checksum=f"{device:08x}{seq:056x}",
        )
        at += expected + 1_000
        if at > CLOSE_MS:
            day, at = (day + 1) % DAYS, OPEN_MS


def batches(rows: int) -> Iterator[BatchWrite]:
    """Batches of 1000 plays, round-robin over the fleet, so that every day fills evenly."""
    devices = fleet_size(rows)
    rng = random.Random(7)
    per_device = -(-rows // devices)
    streams = [device_plays(d, per_device, rng) for d in range(devices)]
    made = 0
    while made < rows:
        for stream in streams:
            records = [r for _, r in zip(range(min(BATCH, rows - made)), stream, strict=False)]
            if not records:
                continue
            received = records[-1].end_ts + 500
            judged = [Judged(r, VALID if r.end_reason == "completed" else PARTIAL) for r in records]
            yield BatchWrite(records[0].device_id, received, received, judged)
            made += len(records)
            if made >= rows:
                return


async def load(store: Store, rows: int) -> float:
    """Commit `rows` plays in groups; records/s."""
    started = time.perf_counter()
    group: list[BatchWrite] = []
    done = 0
    for write in batches(rows):
        group.append(write)
        if len(group) == GROUP:
            await store.commit(group)
            done += sum(len(w.judged) for w in group)
            group = []
            if done % 1_000_000 < GROUP * BATCH:
                rate = done / (time.perf_counter() - started)
                print(f"  {done:,} rows committed, {rate:,.0f}/s", flush=True)
    if group:
        await store.commit(group)
    return rows / (time.perf_counter() - started)


async def prepare(url: str, rows: int) -> tuple[float, str]:
    """Load the month into a fresh store; the load rate and an operator token."""
    store = open_store(url, Path(tempfile.gettempdir()) / "pp-bench-blobs")
    await store.open()
    try:
        partitions = getattr(store, "_partitions", None)
        if partitions is not None:  # PostgreSQL: the month's day partitions, as in production
            await partitions.ensure(range(MONTH_START // DAY_MS, MONTH_START // DAY_MS + DAYS))
        rate = await load(store, rows)
        token = await add_operator(store, f"bench-{secrets.token_hex(3)}")
    finally:
        await store.close()
    return rate, token


def serve(url: str) -> tuple[subprocess.Popen[bytes], str]:
    """A real `playproof serve` on the database; its process and base URL."""
    cmd = [sys.executable, "-m", "playproof", "serve", "--db", url, "--port", "0"]
    proc = subprocess.Popen([*cmd, "--log-level", "warning"], stderr=subprocess.PIPE)
    assert proc.stderr is not None
    for line in proc.stderr:
        if b"playproof serving on " in line:
            return proc, line.decode().split("serving on ")[1].strip()
    raise RuntimeError("the server did not start")


def timed(http: httpx.Client, path: str, params: dict[str, Any], runs: int) -> tuple[float, Any]:
    """Median seconds of `runs` GETs (after one warm-up), and the last answer."""
    answer = http.get(path, params=params)
    answer.raise_for_status()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        answer = http.get(path, params=params)
        times.append(time.perf_counter() - started)
        answer.raise_for_status()
    return statistics.median(times), answer.json()


def export(base: str, token: str, kind: str, rows: int) -> tuple[int, float]:
    """Stream `rows` impressions as `kind` with curl (a lean client); lines and seconds."""
    url = f"{base}/v1/impressions?from=2026-10-01&limit={rows}&format={kind}"
    with tempfile.NamedTemporaryFile(suffix=f".{kind}") as out:
        started = time.perf_counter()
        subprocess.run(
            ["curl", "-sSf", "-o", out.name, "-H", f"Authorization: Bearer {token}", url],
            check=True,
        )
        seconds = time.perf_counter() - started
        with open(out.name, "rb") as fh:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    return lines, seconds


REPORTS = [
    ("month by campaign, day (UTC)", {"group_by": "campaign_id,day"}),
    (
        "month by campaign, day (America/New_York)",
        {"group_by": "campaign_id,day", "tz": "America/New_York"},
    ),
    (
        "month by campaign, day (Asia/Kathmandu, +05:45)",
        {"group_by": "campaign_id,day", "tz": "Asia/Kathmandu"},
    ),
    ("month by supplier (UTC)", {"group_by": "supplier_id"}),
    ("month by store, day (UTC)", {"group_by": "store_id,day"}),
    ("month by device (UTC)", {"group_by": "device_id"}),
    (
        "month by campaign, hour, range not on the hour",
        {"group_by": "campaign_id,hour", "from": "2026-10-01T00:07:00Z"},
    ),
]


def measure(base: str, token: str, rows: int, export_rows: int, count: int) -> None:
    """Time the reports and the exports over HTTP; check the totals against the rows."""
    month = {"from": "2026-10-01", "to": "2026-11-01"}
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=600) as http:
        for name, extra in REPORTS:
            seconds, body = timed(http, "/v1/reports/delivery", {**month, **extra}, 5)
            print(f"| {name} | {len(body['rows']):,} rows | {seconds * 1000:,.0f} ms |")
            if "from" not in extra and extra.get("tz") is None:
                assert body["totals"]["plays"] == count, (body["totals"], count)
        for kind in ("csv", "ndjson"):
            lines, seconds = export(base, token, kind, export_rows)
            data = lines - (kind == "csv")
            rate = data / seconds
            print(f"| export {data:,} rows as {kind} | {rate:,.0f} rows/s | {seconds:.2f} s |")


def count_rows(url: str, path: Path | None) -> int:
    """The impressions stored in October, counted from the rows themselves."""
    sql = f"SELECT count(*) FROM impressions WHERE start_ts >= {MONTH_START}"
    sql += f" AND start_ts < {int(datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1000)}"
    if path is not None:
        import sqlite3

        with sqlite3.connect(path) as conn:
            return int(conn.execute(sql).fetchone()[0])
    with psycopg.connect(url) as conn:
        row = conn.execute(sql.encode()).fetchone()
        return int(row[0]) if row else 0


def run(kind: str, url: str, path: Path | None, args: argparse.Namespace) -> None:
    """Load, serve, measure, stop."""
    print(f"\n## {kind}: {args.rows:,} impressions, {fleet_size(args.rows)} screens", flush=True)
    rate, token = asyncio.run(prepare(url, args.rows))
    print(f"| load through Store.commit (groups of {GROUP}x{BATCH}) | {rate:,.0f} rows/s | |")
    count = count_rows(url, path)
    proc, base = serve(url)
    try:
        measure(base, token, args.rows, args.export_rows, count)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    """Parse arguments and run the chosen stores."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--export-rows", type=int, default=1_000_000)
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--db", default=PG_URL, help="PostgreSQL server (a schema is made)")
    parser.add_argument("--keep", type=Path, help="keep the SQLite file here, and the PG schema")
    args = parser.parse_args()
    if args.store in ("sqlite", "both"):
        folder = args.keep or Path(tempfile.mkdtemp(prefix="pp-bench-"))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"reports-{args.rows}.db"
        run("SQLite", f"sqlite:///{path}", path, args)
        if args.keep is None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    if args.store in ("postgres", "both"):
        schema = f"pp_bench_{secrets.token_hex(4)}"
        with psycopg.connect(args.db, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}".encode())
        try:
            sep = "&" if "?" in args.db else "?"
            run("PostgreSQL", f"{args.db}{sep}options=-csearch_path%3D{schema}", None, args)
        finally:
            if args.keep is None:
                with psycopg.connect(args.db, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA {schema} CASCADE".encode())
            else:
                print(f"kept schema {schema}")
    os.environ.pop("PLAYPROOF_DB", None)


if __name__ == "__main__":
    main()
