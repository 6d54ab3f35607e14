"""The PostgreSQL store's commit path alone: records/s for 1000-record commits.

    .venv/bin/python bench/pg_insert.py                      # 100 commits, 3 lanes
    .venv/bin/python bench/pg_insert.py --commits 200 --lanes 1 --devices 50

Batches are built and judged before the clock starts (sealed records, the real
rules); the clock measures only `PostgresStore.commit` from `--lanes` concurrent
tasks, as the group committer drives it. Each run uses a fresh schema, dropped
at the end. The database shares the machine's cores with this process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time
from itertools import count
from pathlib import Path

import psycopg
import uvloop

from playproof.protocol import Record, seal
from playproof.rules import Context, judge
from playproof.stores.base import BatchWrite, Judged
from playproof.stores.postgres import PostgresStore

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def now_ms() -> int:
    """The wall clock in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def record(device: str, seq: int, end: int) -> Record:
    """A sealed, valid record."""
    return seal(
        Record(
            v=1,
            device_id=device,
            journal_id="j-bench",
            seq=seq,
            campaign_id=f"cmp-{seq % 50}",
            ad_group_id="ag-1",
            content_id=f"cnt-{seq % 200}",
            store_id="store-1",
            supplier_id=f"sup-{seq % 20}",
            start_ts=end - 15_000,
            end_ts=end,
            duration_ms=15_000,
            expected_ms=15_000,
            end_reason="completed",
            clock_offset_ms=0,
            clock_synced=True,
            screenshot_sha256=None,
            screenshot_at_ms=None,
        )
    )


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU seconds the processes have used so far (from /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def backend_pids(url: str, app: str) -> list[int]:
    """The server processes working for this run: its backends and the WAL writer."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
            "OR backend_type IN ('walwriter', 'checkpointer', 'background writer')",
            (app,),
        ).fetchall()
    return [pid for (pid,) in rows]


def batches(commits: int, size: int, devices: int) -> list[BatchWrite]:
    """`commits` judged batches of `size` records, round-robin over `devices`."""
    now = now_ms()
    seqs = {f"bench-{d}": count(1) for d in range(devices)}
    out = []
    for i in range(commits):
        device = f"bench-{i % devices}"
        ctx = Context(device, "store-1", now, now)
        records = [record(device, next(seqs[device]), now - 1000) for _ in range(size)]
        out.append(BatchWrite(device, now, now, [Judged(r, judge(r, ctx)) for r in records]))
    return out


async def run(url: str, app: str, commits: int, size: int, lanes: int, devices: int) -> None:
    """Commit every batch from `lanes` tasks and print the rate and the CPU it took."""
    work = batches(commits, size, devices)
    store = PostgresStore(url, Path(os.environ.get("TMPDIR", "/tmp")) / "pg-bench-blobs")
    await store.open()
    queue = list(reversed(work))

    async def lane() -> None:
        while queue:
            acks = await store.commit([queue.pop()])
            assert all(a.result == "accepted" for a in acks[0]), acks[0][:3]

    await asyncio.gather(*(store.commit([queue.pop()]) for _ in range(lanes)))  # warm up
    commits -= lanes
    try:
        pids = backend_pids(url, app)
        server, client = cpu_seconds(pids), time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(lanes)))
        elapsed = time.perf_counter() - started
        client, server = time.process_time() - client, cpu_seconds(pids) - server
    finally:
        await store.close()
    total = commits * size
    print(
        f"{total} records in {commits} commits of {size}, {lanes} lanes, {devices} devices: "
        f"{elapsed:.2f} s, {total / elapsed:,.0f} records/s, "
        f"{elapsed / commits * 1000:.1f} ms per commit; CPU ms per 1000 records: "
        f"playproof {client / total * 1e6:.1f}, PostgreSQL {server / total * 1e6:.1f}"
    )


def main() -> None:
    """Parse arguments, make a schema, run, drop the schema."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=DEFAULT_URL, help="a postgresql:// URL (no options)")
    parser.add_argument("--commits", type=int, default=100)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--lanes", type=int, default=3)
    parser.add_argument("--devices", type=int, default=20)
    args = parser.parse_args()
    schema = f"pp_bench_{secrets.token_hex(4)}"  # also the application_name
    with psycopg.connect(args.db, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in args.db else "?"
    url = f"{args.db}{sep}options=-csearch_path%3D{schema}&application_name={schema}"
    try:
        uvloop.run(run(url, schema, args.commits, args.size, args.lanes, args.devices))
    finally:
        with psycopg.connect(args.db, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
