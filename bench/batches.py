"""1000-record batches (issue 17): the service over HTTP against the store's own limit and,
on PostgreSQL, against a raw COPY of the same rows, all in one run on one database.

    .venv/bin/python bench/batches.py --quick                 # a smoke run, under a minute
    .venv/bin/python bench/batches.py                         # SQLite, 10 s a phase
    .venv/bin/python bench/batches.py --db postgresql://postgres@127.0.0.1:5432/test
    .venv/bin/python bench/batches.py --profile /tmp/prof     # py-spy on the service (raw)

Three phases, in this order, each with devices of its own (fresh ids, sequences from 1),
so that no phase's records are duplicates of another's; every record is version 1
(unsigned), shaped by `loadgen.make_record` (a 20-item playlist, one play in ten skipped,
a screenshot hash):

`service`: `playproof serve` in a process of its own (bench/stream.py's launcher of
bench/ingest.py's `Server`: the per-device rate limit lifted, a private metrics listener
from which the batches per group commit are read), driven by bench/loadgen.py's HTTP
round: `--clients` clients, one device each, posting `--records`-record batches back to
back. Reported:
records/s acknowledged `accepted`, the server process's CPU per record (utime + stime
from /proc, all its threads), and the generator's (this process) apart.

`store`: the store's own limit. Batches of the same kind are built, decoded, judged by
the service's own code (`Ingestor.judge`: checksums and rules) before the clock starts;
the clock then runs `with_draft` (the commit plan the service drafts on its event loop
before the group committer) and the store's `commit` (`open_store`: the same SqliteStore
or PostgresStore the service uses, so every write the service makes for the rows:
impressions, impression keys, sequences, rollups), from as many concurrent tasks as the
service's group committer has lanes (`commit_lanes`: 1 on SQLite, 3 on PostgreSQL; each
lane has devices of its own, as a device's batches never overlap in the service).
Drafting is counted on the store's side, since it is store work the service does; its
share is printed apart. No HTTP, no decoding, no rules. Reported: records/s and this
process's CPU per record (its threads included: SQLite writes on one), and, apart, the
CPU per record of decoding and judging the batches off the clock. The batches are built
with the collector off and frozen before the clock, as the service freezes what lives.
`--json` ends the output with one line of each phase's figures (bench/stream.py's floor
runs this phase with 1-record batches).

`copy` (PostgreSQL only): a raw COPY of the same rows into the same tables. The rows are
planned before the clock (the draft's impression rows, its rollup deltas, and each
journal's high-water mark chained from batch to batch), and each batch is written in one
transaction on a connection of its own lane: binary COPY into `impression_keys` and
`impressions` (the store's own COPY statements and types), the rollup deltas by the
store's `unnest` upsert (a rollup row is added to, which COPY cannot do), and one
upsert of the journal's row. No journal lock, no lookup of stored checksums or gaps, no
planning on the clock: the floor of what the store writes. Reported: records/s and this
process's CPU per record.

`raw` (SQLite only): the same kind of batches, `--group` a transaction, planned before
the clock as the store plans a group none of whose records is stored yet (the draft's
rows merged, the rollup deltas, each journal's state chained from group to group), then
written from this thread by the store's own statements (`stores/sqlite_rows.py`: the
impressions insert, the rollup upserts, the journal upsert) between BEGIN IMMEDIATE and
COMMIT: no executor, no lookups, no planning on the clock. What SQLite itself costs for
what the store writes. Reported: records/s and this process's CPU per record.

On PostgreSQL each phase also reports the database's CPU per record: its backends
serving this run (found by application_name) plus the WAL writer, checkpointer and
background writer. The run uses a fresh schema, dropped at the end; on SQLite a fresh
file in a temp directory.

Ratios printed: service / store (issue 17's target: at least 60 %), on PostgreSQL
service / copy (at least 75 %) and store / copy, on SQLite store / raw. Every phase
checks exactly-once: the database gained exactly the records acknowledged accepted (or
copied, or written), warm-up rounds included. The
generator, the service and the database share the machine's cores; the load average
is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import secrets
import shlex
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from time import perf_counter
from typing import Any

import psycopg
import uvloop

import ingest
import loadgen
import pg_insert
import stream
from ingest import ProcProbe
from loadgen import Device, count_rows
from playproof import protocol
from playproof.rules import DEFAULT_POLICY, SequenceState
from playproof.server.committer import GroupCommitter
from playproof.server.ingest import Ingestor, wall_clock_ms
from playproof.stores import open_store, sqlite_conn, sqlite_rows
from playproof.stores import postgres_sql as q
from playproof.stores.base import IMPRESSION_COLUMNS, BatchWrite, DeviceInfo, sequence_changes
from playproof.stores.draft import plan_group, with_draft
from playproof.stores.rollup import ROLLUPS, Delta, Rollup, postgres_upsert
from stream import load_average, machine, start_profile, stop_profile

STORE_MARGIN = 1.6  # pre-build this much more than the warm-up rate predicts
KEY_ROW = itemgetter(*(IMPRESSION_COLUMNS.index(c) for c in q.KEY_COLUMNS))
UPSERT_JOURNAL = (
    "INSERT INTO journals AS j (device_id, journal_id, high_water, high_water_ts, gap_count, "
    "suspect, first_seen, last_seen) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (device_id, journal_id) DO UPDATE SET high_water = excluded.high_water, "
    "high_water_ts = excluded.high_water_ts, gap_count = excluded.gap_count, "
    "suspect = excluded.suspect, last_seen = excluded.last_seen"
)


# --- figures -----------------------------------------------------------------------


@dataclass
class Phase:
    """One measured phase: what it committed, in how long, at what CPU."""

    name: str
    records: int = 0
    seconds: float = math.nan
    cpu_s: float = math.nan  # the process doing the work: the server, or this one
    gen_cpu_s: float = math.nan  # the generator's (the service phase only)
    db_cpu_s: float = math.nan  # PostgreSQL's processes for this run
    draft_s: float = 0.0  # of cpu_s, drafting commit plans (the store phase)
    # Decoding and judging the phase's batches, done off the clock (the store phase): the
    # service's per-record work before the store, for bench/stream.py's floor.
    judge_us: float = math.nan
    exact: bool = False  # the database gained exactly what was acknowledged
    errors: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def rate(self) -> float:
        """Records per second."""
        return self.records / self.seconds if self.seconds > 0 else math.nan

    def us(self, seconds: float) -> float:
        """Seconds of CPU as microseconds per record."""
        return seconds / self.records * 1e6 if self.records else math.nan


def line(p: Phase) -> str:
    """A phase's figures in one line."""
    parts = [
        f"{p.name:8} {p.rate:9,.0f} records/s  ({p.records:,} in {p.seconds:.1f} s)",
        f"CPU {p.us(p.cpu_s):6.1f} µs/rec",
    ]
    if p.draft_s:
        parts.append(f"(drafting {p.us(p.draft_s):.1f})")
    if not math.isnan(p.judge_us):
        parts.append(f"(off the clock: decode and judge {p.judge_us:.1f})")
    if not math.isnan(p.gen_cpu_s):
        parts.append(f"generator {p.us(p.gen_cpu_s):.1f} µs/rec")
    if not math.isnan(p.db_cpu_s):
        parts.append(f"PostgreSQL {p.us(p.db_cpu_s):.1f} µs/rec")
    return "  ".join(parts) + (f"  [{p.note}]" if p.note else "")


def exactly_once(p: Phase, gained: int, acknowledged: int) -> None:
    """Note and print whether the database gained exactly the acknowledged records."""
    p.exact = gained == acknowledged
    mark = "OK" if p.exact else "MISMATCH"
    print(
        f"  exactly-once {mark} ({p.name}): database gained {gained:,} impressions; "
        f"{acknowledged:,} acknowledged accepted",
        flush=True,
    )


# --- PostgreSQL: a schema of our own and its server's CPU --------------------------


@asynccontextmanager
async def database(args: argparse.Namespace, tmp: Path) -> AsyncIterator[tuple[str, str]]:
    """The run's database URL and its application_name ("" on SQLite); dropped after."""
    if not args.db:
        yield f"sqlite:///{tmp / 'playproof.db'}", ""
        return
    schema = f"pp_batches_{secrets.token_hex(4)}"  # also the application_name
    with psycopg.connect(args.db, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in args.db else "?"
    try:
        yield f"{args.db}{sep}options=-csearch_path%3D{schema}&application_name={schema}", schema
    finally:
        with psycopg.connect(args.db, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


class DbCpu:
    """CPU seconds PostgreSQL spends for this run (its backends by application_name, and
    the WAL writer, checkpointer and background writer), between `begin` and `end`;
    backends that start meanwhile count from zero."""

    def __init__(self, url: str, app: str) -> None:
        self.url, self.app = url, app
        self._before: dict[int, float] = {}
        self.seconds = math.nan

    def _sample(self) -> dict[int, float]:
        return {
            pid: pg_insert.cpu_seconds([pid]) for pid in pg_insert.backend_pids(self.url, self.app)
        }

    def begin(self) -> None:
        """Note the counters."""
        if self.app:
            self._before = self._sample()

    def end(self) -> None:
        """The seconds used since `begin`."""
        if self.app:
            after = self._sample()
            self.seconds = sum(cpu - self._before.get(pid, 0.0) for pid, cpu in after.items())


# --- phase 1: the service over HTTP ------------------------------------------------


class ServiceProbe:
    """The service's and the generator's CPU, PostgreSQL's, and py-spy, for the measured round."""

    def __init__(self, args: argparse.Namespace, pid: int, db: DbCpu) -> None:
        self.args, self.pid, self.db = args, pid, db
        self.proc = ProcProbe(pid)
        self.started = self.ended = 0.0
        self._profile: Any = None

    def begin(self) -> None:
        """The measured round starts."""
        self._profile = start_profile(self.args, self.pid, f"service-{self.args.tag}")
        self.db.begin()
        self.proc.begin()
        self.started = perf_counter()

    def end(self) -> None:
        """The measured round has ended."""
        self.ended = perf_counter()
        self.proc.end()
        self.db.end()
        stop_profile(self._profile)


async def run_service(args: argparse.Namespace, url: str, app: str, _blobs: Path) -> Phase:
    """`playproof serve`, 1000-record batches from `--clients` clients."""
    phase = Phase("service")
    devices = await ingest.provision_playproof(url, ingest.device_ids(args.clients))
    before = count_rows(url)
    server = stream.playproof_server(args, url, pin=False)  # with a metrics listener
    address = server.start()
    db = DbCpu(url, app)
    probe = ServiceProbe(args, server.pid or 0, db)
    try:
        result = await loadgen.run_http(address, devices, args.records, args.duration, probe)
        commits = server.metrics()
    finally:
        server.stop()
    row = ingest.Row("service", result, probe.proc)
    ingest.show_log(server, [row])
    elapsed = probe.ended - probe.started
    phase.records, phase.seconds = result.tally.accepted, result.tally.seconds
    phase.cpu_s = probe.proc.cpu / 100 * elapsed
    phase.gen_cpu_s = probe.proc.gen_cpu / 100 * elapsed
    phase.db_cpu_s = db.seconds
    phase.errors = [f"{n:,} × {what}" for what, n in result.errors.most_common(6)]
    phase.note = f"{result.params}; {stream.per_commit(commits)}, warm-up included"
    exactly_once(phase, count_rows(url) - before, result.stored)
    return phase


# --- phase 2: the store's own limit --------------------------------------------------


class Batches:
    """Judged batches of loadgen's records for fresh devices, as the service would commit
    them: each batch decoded from its HTTP body and judged by the service's own code."""

    def __init__(self, store: Any, records: int, devices: int) -> None:
        self.records = records
        self.devices = [Device(d, "") for d in ingest.device_ids(devices)]
        self._ingestor = Ingestor(store, GroupCommitter(store))
        self._next = 0
        self.judge_s = 0.0  # CPU decoding and judging, over `judged` records
        self.judged = 0

    def one(self, device: Device) -> BatchWrite:
        """The device's next batch, judged now (it is received now)."""
        body = loadgen.http_body(loadgen.take(device, self.records))
        info = DeviceInfo(device.device_id, device.store_id, 0, None)
        started = time.thread_time()
        write = self._ingestor.judge(protocol.decode_batch(body), info, wall_clock_ms())
        self.judge_s += time.thread_time() - started
        self.judged += self.records
        return write

    def lanes(self, lanes: int, per_lane: int) -> list[list[BatchWrite]]:
        """`per_lane` batches for each lane, round-robin over the lane's own devices.

        Built with the collector off and frozen after, as the service freezes what has
        lived a second (server/collector.py): else collections walking the whole pool
        would be timed as decoding, judging and committing.
        """
        mine = [self.devices[k::lanes] for k in range(lanes)]
        gc.disable()
        try:
            return [[self.one(own[i % len(own)]) for i in range(per_lane)] for own in mine]
        finally:
            gc.enable()
            gc.freeze()


def pool_size(args: argparse.Namespace, rate: float, lanes: int) -> int:
    """Batches per lane: `--batches` over the lanes, else enough for `--duration`."""
    if args.batches:
        return math.ceil(args.batches / lanes)
    return max(2, math.ceil(rate * args.duration * STORE_MARGIN / lanes / args.records))


async def run_store(args: argparse.Namespace, url: str, app: str, blobs: Path) -> Phase:
    """The same kind of batches through the store's commit, drafted on the clock."""
    phase = Phase("store")
    store = open_store(url, blobs)
    await store.open()
    try:
        lanes = args.lanes or store.commit_lanes
        made = Batches(store, args.records, max(args.clients, lanes))
        before = count_rows(url)
        accepted = 0

        async def lane(pool: list[BatchWrite], deadline: float) -> tuple[int, float]:
            stored, drafting = 0, 0.0
            for i in range(0, len(pool), args.group):
                if perf_counter() >= deadline:
                    break
                started = time.thread_time()  # CPU, not wall: the cores are shared
                group = [with_draft(w) for w in pool[i : i + args.group]]
                drafting += time.thread_time() - started
                for acks in await store.commit(group):
                    stored += sum(a.result == "accepted" for a in acks)
            return stored, drafting

        warm = made.lanes(lanes, 2 * args.group)
        started = perf_counter()
        warmed = await asyncio.gather(*(lane(p, math.inf) for p in warm))
        rate = sum(n for n, _ in warmed) / (perf_counter() - started)
        accepted += sum(n for n, _ in warmed)
        pools = made.lanes(lanes, pool_size(args, rate, lanes))
        deadline = math.inf if args.batches else perf_counter() + args.duration
        db = DbCpu(url, app)
        db.begin()
        cpu0, started = time.process_time(), perf_counter()
        done = await asyncio.gather(*(lane(p, deadline) for p in pools))
        phase.seconds = perf_counter() - started
        phase.cpu_s = time.process_time() - cpu0
        db.end()
    finally:
        await store.close()
    phase.records = sum(n for n, _ in done)
    phase.draft_s = sum(d for _, d in done)
    phase.judge_us = made.judge_s / made.judged * 1e6
    phase.db_cpu_s = db.seconds
    accepted += phase.records
    offered = sum(len(p) for p in pools) * args.records
    if phase.records < offered and args.batches:
        phase.errors.append(f"{offered - phase.records:,} records not accepted")
    phase.note = f"{lanes} lanes, {args.group} batch(es) a commit, {len(made.devices)} devices"
    exactly_once(phase, count_rows(url) - before, accepted)
    return phase


# --- phase 3: a raw COPY of the same rows (PostgreSQL) -------------------------------


@dataclass
class Group:
    """One group commit's writes as the store would make them, planned before the
    clock: impression rows, rollup deltas, journal rows."""

    impressions: list[tuple[Any, ...]]
    rollups: dict[Rollup, list[Delta]]
    journals: list[tuple[Any, ...]]


def planned_groups(writes: Sequence[BatchWrite], group: int) -> list[Group]:
    """The lane's batches, `group` a commit, planned as the store plans a group of batches
    none of whose records is stored yet; each journal's state chained from group to group."""
    states: dict[tuple[str, str], SequenceState] = {}
    out = []
    for i in range(0, len(writes), group):
        chunk = [with_draft(w) for w in writes[i : i + group]]
        plan, rollups = plan_group(chunk, {})
        now = max(w.received_at for w in chunk)
        changes = sequence_changes(plan.arrivals, states, DEFAULT_POLICY.max_open_gaps)
        journals = []
        for key, change in changes.items():
            states[key] = st = change.state
            journals.append((*key, st.high_water, st.high_water_ts, st.gap_count, st.suspect))
        out.append(Group(plan.impressions, rollups, [(*j, now, now) for j in journals]))
    return out


_UPSERT = {rollup: postgres_upsert(rollup) for rollup in ROLLUPS}
_IMPRESSION_TYPES = [q.IMPRESSION_TYPES[c] for c in IMPRESSION_COLUMNS]


async def copy_batch(conn: psycopg.AsyncConnection[Any], rows: Group) -> None:
    """One batch in one transaction: COPY keys and impressions, add the rollups, move the
    journal."""
    async with conn.transaction():
        cur = conn.cursor()
        async with cur.copy(q.COPY_KEYS) as copy:
            copy.set_types(q.KEY_TYPES)
            for key in map(KEY_ROW, rows.impressions):
                await copy.write_row(key)
        async with cur.copy(q.COPY_IMPRESSIONS) as copy:
            copy.set_types(_IMPRESSION_TYPES)
            for row in rows.impressions:
                await copy.write_row(row)
        for rollup, delta in rows.rollups.items():
            await conn.execute(_UPSERT[rollup], [list(c) for c in zip(*delta, strict=True)])
        for journal in rows.journals:
            await conn.execute(UPSERT_JOURNAL, journal)


async def run_copy(args: argparse.Namespace, url: str, app: str, blobs: Path) -> Phase:
    """Raw COPY of planned rows, one transaction a batch, from the store's lane count."""
    phase = Phase("copy")
    store = open_store(url, blobs)  # only to judge batches as the service does
    lanes = args.lanes or store.commit_lanes
    made = Batches(store, args.records, max(args.clients, lanes))
    conns = [await psycopg.AsyncConnection.connect(url) for _ in range(lanes)]
    before = count_rows(url)
    try:

        async def lane(
            conn: psycopg.AsyncConnection[Any], pool: list[Group], deadline: float
        ) -> int:
            copied = 0
            for rows in pool:
                if perf_counter() >= deadline:
                    break
                await copy_batch(conn, rows)
                copied += len(rows.impressions)
            return copied

        warm = [planned_groups(p, 1) for p in made.lanes(lanes, 2)]
        started = perf_counter()
        copied = sum(await asyncio.gather(*map(lane, conns, warm, [math.inf] * lanes)))
        rate = copied / (perf_counter() - started)
        pools = [planned_groups(p, 1) for p in made.lanes(lanes, pool_size(args, rate, lanes))]
        deadline = math.inf if args.batches else perf_counter() + args.duration
        db = DbCpu(url, app)
        db.begin()
        cpu0, started = time.process_time(), perf_counter()
        done = await asyncio.gather(*map(lane, conns, pools, [deadline] * lanes))
        phase.seconds = perf_counter() - started
        phase.cpu_s = time.process_time() - cpu0
        db.end()
    finally:
        for conn in conns:
            await conn.close()
    phase.records = sum(done)
    phase.db_cpu_s = db.seconds
    phase.note = f"{lanes} lanes, one transaction a batch"
    exactly_once(phase, count_rows(url) - before, copied + phase.records)
    return phase


# --- phase 3 on SQLite: the same rows written with the store's own statements ---------


def write_group(conn: sqlite3.Connection, group: Group) -> None:
    """One transaction of the store's own statements: no lookups, no planning."""
    conn.execute("BEGIN IMMEDIATE")
    sqlite_rows._INSERT_IMPRESSION.run(conn, group.impressions)
    for rollup, rows in group.rollups.items():
        sqlite_rows._UPSERT_ROLLUP[rollup].run(conn, rows)
    conn.executemany(sqlite_rows._UPSERT_JOURNAL, group.journals)
    conn.execute("COMMIT")


async def run_raw(args: argparse.Namespace, url: str, app: str, blobs: Path) -> Phase:
    """SQLite: the rows of `group` batches a transaction, written with the store's own
    statements from this thread (what SQLite itself costs for what the store writes)."""
    phase = Phase("raw")
    store = open_store(url, blobs)  # migrated, then closed: only its schema is used
    await store.open()
    await store.close()
    made = Batches(store, args.records, max(args.clients, 1))
    conn = sqlite_conn.connect(Path(url.removeprefix("sqlite:///")))
    before = count_rows(url)

    def lane(pool: list[Group], deadline: float) -> int:
        written = 0
        for group in pool:
            if perf_counter() >= deadline:
                break
            write_group(conn, group)
            written += len(group.impressions)
        return written

    try:
        started = perf_counter()
        written = lane(planned_groups(made.lanes(1, 2 * args.group)[0], args.group), math.inf)
        rate = written / (perf_counter() - started)
        pool = made.lanes(1, pool_size(args, rate, 1))[0]
        groups = planned_groups(pool, args.group)
        deadline = math.inf if args.batches else perf_counter() + args.duration
        cpu0, started = time.process_time(), perf_counter()
        phase.records = lane(groups, deadline)
        phase.seconds = perf_counter() - started
        phase.cpu_s = time.process_time() - cpu0
    finally:
        conn.close()
    phase.note = f"{args.group} batch(es) a transaction, {len(made.devices)} devices"
    exactly_once(phase, count_rows(url) - before, written + phase.records)
    return phase


# --- the run ---------------------------------------------------------------------------


def ratio(name: str, ours: Phase, ref: Phase, target: float | None = None) -> str:
    """`ours` as a percentage of `ref`, against the target if there is one."""
    pct = 100 * ours.rate / ref.rate
    figures = f"{name}: {ours.rate:,.0f} / {ref.rate:,.0f} = {pct:.0f} %"
    if target is None:
        return figures
    return f"{figures} (target ≥ {target:.0f} %: {'met' if pct >= target else 'MISSED'})"


async def run(args: argparse.Namespace) -> int:
    """The three phases; exit status 1 on any error or count that is off."""
    print(f"{machine()}; load average {load_average()}")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}", flush=True)
    with tempfile.TemporaryDirectory(prefix="playproof-batches-") as tmp:
        blobs = Path(tmp) / "blobs"
        os.environ["PLAYPROOF_BLOB_DIR"] = str(blobs)  # the service's, and admin's
        async with database(args, Path(tmp)) as (url, app):
            print(f"database: {url if not app else f'{args.db} schema {app}'}", flush=True)
            runs = {"service": run_service, "store": run_store, "copy": run_copy, "raw": run_raw}
            measured = {}
            for name in args.order.split(","):
                # COPY is PostgreSQL's, the raw statements SQLite's.
                if (name != "copy" or app) and (name != "raw" or not app):
                    measured[name] = phase = await runs[name](args, url, app, blobs)
                    print(line(phase), flush=True)
    phases = list(measured.values())
    print(f"\n{args.records}-record batches, {args.duration:g} s a phase:")
    for p in phases:
        print(f"  {line(p)}")
        for error in p.errors:
            print(f"    ERROR {p.name}: {error}")
    got = {p.name: p for p in phases}
    for ours, ref, target in (
        ("service", "store", 60),
        ("service", "copy", 75),
        ("store", "copy", None),
        ("store", "raw", None),
    ):
        if ours in got and ref in got:
            print(f"  {ratio(f'{ours} / {ref}', got[ours], got[ref], target)}")
    print(f"load average {load_average()}")
    clean = all(p.exact and not p.errors for p in phases)
    if args.json:  # for bench/stream.py's floor
        print("json " + json.dumps({p.name: summary(p) for p in phases}))
    return 0 if clean else 1


def summary(p: Phase) -> dict[str, Any]:
    """A phase's figures for another script: records/s and CPU µs per record."""
    return {
        "rate": p.rate,
        "cpu_us": p.us(p.cpu_s),
        "draft_us": p.us(p.draft_s),
        "judge_us": p.judge_us,
        "exact": p.exact and not p.errors,
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--db", help="a postgresql:// URL (default: a fresh SQLite file)")
    p.add_argument("--records", type=int, default=1000, help="records per batch")
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per phase")
    p.add_argument(
        "--batches", type=int, help="store and copy phases: this many batches, not --duration"
    )
    p.add_argument("--clients", type=int, default=4, help="HTTP clients (one device each)")
    p.add_argument("--lanes", type=int, help="store and copy tasks (default: commit_lanes)")
    p.add_argument("--group", type=int, default=1, help="store phase: batches per commit")
    p.add_argument("--quick", action="store_true", help="a fast smoke run (under a minute)")
    p.add_argument("--serve-arg", action="append", default=[], help="extra `serve` argument")
    p.add_argument("--profile", help="py-spy the service's measured round into this directory")
    p.add_argument("--native", action="store_true", help="py-spy --native")
    p.add_argument("--gil", action="store_true", help="py-spy --gil")
    p.add_argument("--tag", default="batches", help="name of the profile file")
    p.add_argument(
        "--order", default="service,store,copy,raw", help="the phases' order (tables grow)"
    )
    p.add_argument("--json", action="store_true", help="end with a line: json {phase: figures}")
    args = p.parse_args(argv)
    # What bench/stream.py's service launcher reads (the WebSocket implementation is idle).
    args.ws, args.gc_log, args.pythonpath = "websockets-sansio", False, None
    if args.quick:
        args.duration = 3.0
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    return args


if __name__ == "__main__":
    sys.exit(uvloop.run(run(parse())))
