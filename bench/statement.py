"""Billing statement benchmark: a month's statement over 10 M impressions (issue 14).

    .venv/bin/python bench/statement.py                       # 10M rows, SQLite
    .venv/bin/python bench/statement.py --rows 1000000 --store both

It builds October 2026 with `bench/reports.py`'s generator, committed through
`Store.commit` in groups of 20 batches of 1000, so that the delivery rollups are
exactly what the service would hold. Then it gives the valid plays decisions in
bulk: one UPDATE marks them verified or failed (`supplier_mismatch` where the
generator's supplier is not the campaign's, as the verifier would, and of the
rest every 10th `overlap`, every 10th `outside_flight,low_quality`), and leaves
every 100th pending, so that the
statement stays provisional and is counted afresh on every request (a final one
would be answered as kept). `rollup_verification` is rebuilt with one INSERT ...
SELECT that mirrors `stores/verdicts.py` `rollup_deltas`: one row per (hour bucket
of start_ts, campaign, ad group, supplier, store, device, status) under reason ''
and one more per failure reason. Before building, that SQL is checked on
`bench/verify.py`'s small fleet to give exactly the rollup rows the real
`Verifier` wrote there; after, a few screens' rollup rows are checked against
`rollup_deltas` itself run on their impression rows. The verification log is not
written (the statement only reads its last id). On PostgreSQL the two tables are
then VACUUM ANALYZEd, as autovacuum would after such a rewrite.

A catalog pricing the 50 campaigns (per_play and cpm, EUR and GBP, multipliers)
is imported with `server/catalogs.import_catalog` before the decisions (an import
sends the decided plays it affects back to pending). Timed, min and median of
--runs: `statements.billing_statement` in-process (what the route calls), then
over HTTP on a real `playproof serve --no-verify` with an operator token:
GET /v1/reports/billing for the month, and as the reference in the same run
GET /v1/reports/delivery for the month grouped by supplier, campaign, ad group
(the statement reads that plus the verification rollup). The statement's totals
are checked against counts of the rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).parent))
import reports  # noqa: I001  (bench/ is not a package)
import verify

from playproof.config import load_policy
from playproof.server import statements
from playproof.server.catalogs import import_catalog
from playproof.server.ingest import wall_clock_ms
from playproof.stores import open_store
from playproof.stores.verdicts import DECIDED_COLUMNS, rollup_deltas

MONTH = {"from": "2026-10-01", "to": "2026-11-01"}
MONTH_END = reports.MONTH_START + reports.DAYS * reports.DAY_MS
IN_MONTH = f"start_ts >= {reports.MONTH_START} AND start_ts < {MONTH_END}"
FAILURES = (
    ("supplier_mismatch", ("supplier_mismatch",)),
    ("overlap", ("overlap",)),
    ("outside_flight,low_quality", ("outside_flight", "low_quality")),
)
# Each campaign's supplier in `catalog()`; the generator gives half a campaign's plays
# another supplier, which the verifier fails as `supplier_mismatch`.
_OWNERS = ", ".join(f"('cmp-{k:02d}', 'sup-{k % 20:02d}')" for k in range(50))
_MISMATCH = "supplier_id <> (SELECT s FROM owners WHERE owners.c = impressions.campaign_id)"
DECIDE = f"""
WITH owners (c, s) AS (VALUES {_OWNERS})
UPDATE impressions SET
  verification = CASE WHEN seq % 100 = 50 THEN 'pending'
                      WHEN {_MISMATCH} OR seq % 10 IN (3, 7) THEN 'failed'
                      ELSE 'verified' END,
  verification_reasons = CASE WHEN seq % 100 = 50 THEN NULL
                              WHEN {_MISMATCH} THEN '{FAILURES[0][0]}'
                              WHEN seq % 10 = 3 THEN '{FAILURES[1][0]}'
                              WHEN seq % 10 = 7 THEN '{FAILURES[2][0]}' ELSE '' END,
  verified_at = CASE WHEN seq % 100 = 50 THEN NULL ELSE {MONTH_END} END
WHERE verification = 'pending' AND {IN_MONTH}
"""
_DIMS = "campaign_id, ad_group_id, supplier_id, store_id, device_id, verification"
_BUCKET = "start_ts - start_ts % 3600000"


def rollup_sql(reason_texts: Iterable[str], sqlite: bool) -> str:
    """INSERT ... SELECT of `rollup_deltas` over every decided row, for these reason texts."""
    pairs = [(text, r) for text in reason_texts for r in text.split(",")]
    values = ", ".join(f"('{text}', '{r}')" for text, r in pairs)
    # SQLite names a VALUES table's columns column1, column2; PostgreSQL takes an alias.
    reasons = (
        f"(SELECT column1 AS text, column2 AS reason FROM (VALUES {values})) AS r"
        if sqlite
        else f"(VALUES {values}) AS r (text, reason)"
    )
    return f"""
INSERT INTO rollup_verification
  (bucket, campaign_id, ad_group_id, supplier_id, store_id, device_id, status, reason, plays)
SELECT {_BUCKET}, {_DIMS}, '', count(*) FROM impressions
WHERE verification IN ('verified', 'failed')
GROUP BY {_BUCKET}, {_DIMS}
UNION ALL
SELECT {_BUCKET}, {_DIMS}, r.reason, count(*)
FROM impressions JOIN {reasons} ON verification_reasons = r.text
WHERE verification = 'failed'
GROUP BY {_BUCKET}, {_DIMS}, r.reason
"""


LINE_SQL = (
    "INSERT INTO rollup_verification_line SELECT bucket, campaign_id, ad_group_id, "
    "supplier_id, status, reason, SUM(plays) FROM rollup_verification "
    "GROUP BY bucket, campaign_id, ad_group_id, supplier_id, status, reason "
    "HAVING SUM(plays) <> 0"
)
COUNTS = (
    "SELECT count(*), sum(CASE WHEN status = 'valid' THEN 1 ELSE 0 END), "
    "sum(CASE WHEN verification = 'verified' THEN 1 ELSE 0 END), "
    "sum(CASE WHEN verification = 'failed' THEN 1 ELSE 0 END), "
    "sum(CASE WHEN verification = 'pending' THEN 1 ELSE 0 END) FROM impressions "
    f"WHERE {IN_MONTH}"
)


def catalog() -> bytes:
    """The 50 campaigns of the generator priced; ad groups as it assigns contents to them."""
    suppliers = [
        {"supplier_id": f"sup-{s:02d}", "name": f"S{s}", "currency": "EUR" if s % 2 else "GBP"}
        for s in range(20)
    ]
    stores = [{"store_id": f"store-{s:02d}", "time_zone": "Europe/London"} for s in range(50)]
    contents = [
        {"content_id": f"cnt-{c:03d}", "expected_ms": 15_000 + 5_000 * (c % 4)} for c in range(200)
    ]
    campaigns = []
    for k in range(50):
        currency = suppliers[k % 20]["currency"]
        price = (
            {"model": "per_play", "amount": f"0.0{k % 9 + 1}25", "currency": currency}
            if k % 2
            else {"model": "cpm", "amount": f"{k % 7 + 2}.50", "currency": currency}
        )
        groups = [
            {"ad_group_id": f"ag-{g:03d}", "contents": [f"cnt-{g:03d}", f"cnt-{g + 100:03d}"]}
            for g in (k, k + 50)
        ]
        campaigns.append(
            {
                "campaign_id": f"cmp-{k:02d}",
                "supplier_id": f"sup-{k % 20:02d}",
                "flight": {"from": "2026-10-01", "to": "2026-11-01"},
                "ad_groups": groups,
                "price": price,
                "impressions_per_play": {"multiplier": f"{k % 5 + 1}.{k % 10}", "sourcetype": 2},
            }
        )
    doc = {"suppliers": suppliers, "stores": stores, "contents": contents, "campaigns": campaigns}
    return json.dumps(doc).encode()


def sql(url: str, path: Path | None, statement: str) -> list[tuple[Any, ...]]:
    """Run one statement on the database in its own transaction; its rows, if any."""
    if path is not None:
        with sqlite3.connect(path) as conn:
            return conn.execute(statement).fetchall()
    with psycopg.connect(url) as conn:
        cur = conn.execute(statement.encode())
        return cur.fetchall() if cur.description else []


def decide(url: str, path: Path | None) -> float:
    """Decisions in bulk and the verification rollup rebuilt from them; seconds."""
    started = time.perf_counter()
    sql(url, path, DECIDE)
    sql(url, path, "DELETE FROM rollup_verification")
    sql(url, path, rollup_sql([text for text, _ in FAILURES], path is not None))
    # The line rollup (migration 0009) as its migration fills it: the same counts summed.
    sql(url, path, "DELETE FROM rollup_verification_line")
    sql(url, path, LINE_SQL)
    if path is None:  # PostgreSQL: what autovacuum would do after such a bulk rewrite
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                b"VACUUM ANALYZE impressions, rollup_verification, rollup_verification_line"
            )
    return time.perf_counter() - started


def check_against_verifier(kind: str) -> int:
    """The rollup SQL gives what the real verifier wrote, on verify.py's small fleet; rows."""
    folder = Path(tempfile.mkdtemp(prefix="pp-bench-statement-check-"))
    url, schema = verify.store_url(kind, folder, "check")
    path = Path(url.removeprefix("sqlite:///")) if kind == "sqlite" else None

    async def decided() -> None:
        store = open_store(url, folder / "blobs")
        await store.open()
        try:
            await verify.seed(store, 20, 60, {})
            await verify.decide_all(store, verify.START + 10 * reports.DAY_MS)
        finally:
            await store.close()

    try:
        asyncio.run(decided())
        columns = "bucket, campaign_id, ad_group_id, supplier_id, store_id, device_id, status"
        read = (
            f"SELECT {columns}, reason, plays FROM rollup_verification ORDER BY {columns}, reason"
        )
        written = sql(url, path, read)
        texts = sql(
            url,
            path,
            "SELECT DISTINCT verification_reasons FROM impressions WHERE verification = 'failed'",
        )
        sql(url, path, "DELETE FROM rollup_verification")
        sql(url, path, rollup_sql([t for (t,) in texts], path is not None))
        rebuilt = sql(url, path, read)
        assert [tuple(r) for r in rebuilt] == [tuple(r) for r in written], "rollup SQL differs"
        assert any(r[6] == "failed" and r[7] for r in written), "no failures to compare"
    finally:
        verify.drop(schema)
        shutil.rmtree(folder, ignore_errors=True)
    return len(written)


def check_rollup(url: str, path: Path | None, devices: list[str]) -> int:
    """Compare these screens' rollup rows with `rollup_deltas` over their rows; rows compared."""
    names = ", ".join(f"'{d}'" for d in devices)
    rows = sql(
        url,
        path,
        f"SELECT {', '.join(DECIDED_COLUMNS)} FROM impressions "
        f"WHERE device_id IN ({names}) AND verification IN ('verified', 'failed')",
    )
    want = rollup_deltas(rows, 1)
    have = sql(
        url,
        path,
        "SELECT bucket, campaign_id, ad_group_id, supplier_id, store_id, device_id, status, "
        f"reason, plays FROM rollup_verification WHERE device_id IN ({names})",
    )
    have = sorted(tuple(r) for r in have)
    assert have == want, (len(have), len(want), [r for r in have if r not in set(want)][:3])
    return len(want)


async def prepare(url: str) -> tuple[float, str]:
    """Import the catalog and add an operator; seconds for the import, and the token."""
    from playproof.server.operators import add_operator

    store = open_store(url, Path(tempfile.gettempdir()) / "pp-bench-blobs")
    await store.open()
    try:
        started = time.perf_counter()
        await import_catalog(store, catalog(), False, wall_clock_ms())
        seconds = time.perf_counter() - started
        token = await add_operator(store, f"bench-{secrets.token_hex(3)}")
    finally:
        await store.close()
    return seconds, token


def summary(times: list[float]) -> str:
    """min / median in ms."""
    return f"{min(times) * 1000:,.0f} / {statistics.median(times) * 1000:,.0f} ms"


async def repeat(call: Callable[[], Awaitable[Any]], runs: int) -> tuple[list[float], Any]:
    """Seconds of each of `runs` calls after one warm-up, and the last answer."""
    answer = await call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        answer = await call()
        times.append(time.perf_counter() - started)
    return times, answer


async def in_process(url: str, runs: int) -> tuple[list[float], dict[str, Any]]:
    """`billing_statement` for the month, as the route calls it."""
    policy = load_policy(None, [])
    store = open_store(url, Path(tempfile.gettempdir()) / "pp-bench-blobs")
    await store.open()
    try:

        async def call() -> bytes:
            return await statements.billing_statement(store, MONTH, wall_clock_ms(), policy)

        times, document = await repeat(call, runs)
    finally:
        await store.close()
    return times, json.loads(document)


def serve(url: str) -> tuple[subprocess.Popen[bytes], str]:
    """A real `playproof serve --no-verify` (nothing decides behind the benchmark)."""
    cmd = [sys.executable, "-m", "playproof", "serve", "--db", url, "--port", "0"]
    proc = subprocess.Popen([*cmd, "--no-verify", "--log-level", "warning"], stderr=subprocess.PIPE)
    assert proc.stderr is not None
    for line in proc.stderr:
        if b"playproof serving on " in line:
            return proc, line.decode().split("serving on ")[1].strip()
    raise RuntimeError("the server did not start")


def over_http(base: str, token: str, runs: int) -> dict[str, tuple[list[float], Any]]:
    """The statement and the reference delivery report over HTTP; seconds and last answer."""
    headers = {"Authorization": f"Bearer {token}"}
    delivery = {**MONTH, "group_by": "supplier_id,campaign_id,ad_group_id"}
    asks = (
        ("GET /v1/reports/billing (month)", "/v1/reports/billing", MONTH),
        (
            "reference: GET /v1/reports/delivery by supplier,campaign,ad group",
            "/v1/reports/delivery",
            delivery,
        ),
    )
    out = {}
    with httpx.Client(base_url=base, headers=headers, timeout=600) as http:
        for name, path, params in asks:
            http.get(path, params=params).raise_for_status()  # warm-up
            times, answer = [], None
            for _ in range(runs):
                started = time.perf_counter()
                answer = http.get(path, params=params)
                times.append(time.perf_counter() - started)
                answer.raise_for_status()
            assert answer is not None
            out[name] = (times, answer.json())
    return out


def check(document: dict[str, Any], counts: tuple[Any, ...]) -> None:
    """The statement's lines add up to the rows: plays, valid, verified, failed, pending."""
    plays, valid, verified, failed, pending = (int(x) for x in counts)
    lines = document["lines"]
    got = tuple(sum(line[k] for line in lines) for k in ("plays", "valid", "verified", "failed"))
    assert got == (plays, valid, verified, failed), (got, counts)
    assert sum(line["pending"] for line in lines) == pending
    assert sum(line["billable_plays"] for line in lines) == verified
    assert document["status"] == "provisional"
    print(
        f"checked: {plays:,} plays, {valid:,} valid, {verified:,} verified, {failed:,} failed,"
        f" {pending:,} pending = the statement's {len(lines)} lines; "
        f"{len(document['totals']['by_currency'])} currency totals",
        flush=True,
    )


def run(kind: str, url: str, path: Path | None, args: argparse.Namespace) -> None:
    """Build, decide, price, time in-process and over HTTP, check."""
    print(f"\n## {kind}: {args.rows:,} impressions, {reports.fleet_size(args.rows)} screens")
    compared = check_against_verifier("sqlite" if path is not None else "postgres")
    print(f"rollup SQL check: equals the real verifier's {compared:,} rollup rows", flush=True)
    started = time.perf_counter()
    rate, _ = asyncio.run(reports.prepare(url, args.rows))
    took = time.perf_counter() - started
    print(f"| load through Store.commit | {rate:,.0f} rows/s | {took:.0f} s |", flush=True)
    # The catalog first: importing it re-decides every decided play it affects.
    imported, token = asyncio.run(prepare(url))
    print(f"| catalog import (50 campaigns) | {imported * 1000:,.0f} ms | |")
    seconds = decide(url, path)
    print(f"| bulk decisions + rollup_verification rebuilt | {seconds:.1f} s | |", flush=True)
    compared = check_rollup(url, path, ["scr-0000", "scr-0001", "scr-0002"])
    print(f"rollup check: {compared:,} rows of 3 screens equal rollup_deltas", flush=True)
    counts = sql(url, path, COUNTS)[0]
    times, document = asyncio.run(in_process(url, args.runs))
    check(document, counts)
    print(f"| billing_statement in-process (min / median of {args.runs}) | {summary(times)} |")
    proc, base = serve(url)
    try:
        for name, (times, body) in over_http(base, token, args.runs).items():
            if "billing" in name:
                check(body, counts)
            else:
                assert sum(r["plays"] for r in body["rows"]) == counts[0]
            print(f"| {name} (min / median of {args.runs}) | {summary(times)} |", flush=True)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    """Parse arguments and run the chosen stores."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument("--db", default=reports.PG_URL, help="PostgreSQL server (a schema is made)")
    args = parser.parse_args()
    if args.store in ("sqlite", "both"):
        folder = Path(tempfile.mkdtemp(prefix="pp-bench-statement-"))
        path = folder / f"statement-{args.rows}.db"
        try:
            run("SQLite", f"sqlite:///{path}", path, args)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    if args.store in ("postgres", "both"):
        schema = f"pp_bench_{secrets.token_hex(4)}"
        with psycopg.connect(args.db, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}".encode())
        try:
            sep = "&" if "?" in args.db else "?"
            run("PostgreSQL", f"{args.db}{sep}options=-csearch_path%3D{schema}", None, args)
        finally:
            with psycopg.connect(args.db, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE".encode())


if __name__ == "__main__":
    main()
