"""Scale benchmark: ingest nodes and loaders through NATS JetStream, in real processes.

    .venv/bin/python bench/scale.py --quick              # a smoke run, about two minutes
    .venv/bin/python bench/scale.py                      # 1, 2, 3 nodes; 1, 2, 3 loaders
    .venv/bin/python bench/scale.py --cluster            # also a private 3-node cluster, R3

Three measurements, each with CPU per record for every process group:

- ingest: N `playproof serve --pipeline` nodes take stream frames from the load
  generator (`loadgen.run_stream`) and publish to JetStream; no loader runs, so
  what is measured is the ingest side alone (nodes, NATS, the generator);
- load: M `playproof load` processes drain the backlog the ingest runs left,
  each M through a fresh durable consumer into a fresh PostgreSQL schema;
- footprint: memory and disk JetStream spends per record kept in the dedupe
  window, on a private nats-server (the figure the sizing in docs/scaling.md needs).

Everything shares this machine's cores, the generator included: the per-record
CPU costs are what carries over to a bigger deployment, not the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import uvloop

import ingest
import loadgen
from playproof.pipeline.loader import wait_loaded
from playproof.pipeline.settings import parse
from playproof.protocol import decode_batch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.pipeline.servers import NatsCluster, NatsServer  # noqa: E402

PG = os.environ.get("PLAYPROOF_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


# --- processes and their CPU -------------------------------------------------------


class LoaderProc:
    """`playproof load` in its own process."""

    def __init__(self, db_url: str, url: str) -> None:
        cmd = [sys.executable, "-m", "playproof", "load", "--pipeline", url, "--db", db_url]
        self.server = ingest.Server("loader", [*cmd, "--log-level", "warning"], "")
        self.server.ready = re.compile(rb"playproof loading partitions()")

    def start(self) -> None:
        """Start, and return once its consumers are bound."""
        self.server.start()

    @property
    def pid(self) -> int | None:
        """The process id."""
        return self.server.pid

    def stop(self) -> None:
        """SIGTERM (the batch under way finishes)."""
        self.server.stop()


def postgres_pids() -> list[int]:
    """Every PostgreSQL process (the server is shared: other clients' work counts too)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "cmdline").read_bytes().startswith(b"postgres"):
                    found.append(int(entry.name))
    return found


def nats_pids(port: int) -> list[int]:
    """The nats-server processes listening on `port` (the shared server), by command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            if cmd and cmd[0].endswith(b"nats-server") and str(port).encode() in b" ".join(cmd):
                found.append(int(entry.name))
    return found


PidSource = Callable[[], list[int]]


@dataclass
class Meter:
    """CPU seconds of named groups of processes, the generator and the whole machine.

    Each group is a function listing its processes, asked again at the end: a process
    that appeared meanwhile (a loader's PostgreSQL backend) counts from zero.
    """

    groups: dict[str, PidSource]
    start: dict[int, float] = field(default_factory=dict)
    spent: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    _machine: float = 0.0
    _generator: float = 0.0
    _t0: float = 0.0

    def begin(self) -> None:
        """Note the counters."""
        self.start = {pid: _cpu(pid) for pids in self.groups.values() for pid in pids()}
        self._machine, self._generator = ingest.busy_seconds(), ingest.cpu_seconds("self")
        self._t0 = time.perf_counter()

    def end(self) -> None:
        """CPU spent per group since `begin`; `rest` is the machine less everything named."""
        self.seconds = time.perf_counter() - self._t0
        self.spent = {
            g: sum(_cpu(p) - self.start.get(p, 0.0) for p in pids())
            for g, pids in self.groups.items()
        }
        self.spent["generator"] = ingest.cpu_seconds("self") - self._generator
        self.spent["machine"] = ingest.busy_seconds() - self._machine
        named = sum(v for g, v in self.spent.items() if g != "machine")
        self.spent["rest"] = max(0.0, self.spent["machine"] - named)

    def us_per(self, group: str, records: int) -> float:
        """Microseconds of CPU per record."""
        return 1e6 * self.spent[group] / max(records, 1)


def _cpu(pid: int) -> float:
    try:
        return ingest.cpu_seconds(pid)
    except OSError:
        return 0.0


# --- schemas --------------------------------------------------------------------------


@contextlib.contextmanager
def schema() -> Any:
    """A fresh PostgreSQL schema on the test server, dropped afterwards; its URL."""
    name = f"pp_bench_{secrets.token_hex(5)}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}".encode())
    try:
        yield f"{PG}{'&' if '?' in PG else '?'}options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE".encode())


def migrate(db: str) -> None:
    """Bring a schema up to date (as `serve` would), before the clock starts."""
    subprocess.run([sys.executable, "-m", "playproof", "db", "upgrade", "--db", db], check=True)


# --- ingest -------------------------------------------------------------------------------


@dataclass
class IngestRow:
    """One ingest run: N nodes."""

    label: str
    nodes: int
    rate: float
    p50_ms: float
    p99_ms: float
    records: int
    meter: Meter
    errors: int


async def run_ingest(args: argparse.Namespace, target: Target, nodes: int, url: str) -> IngestRow:
    """N nodes publishing to JetStream, driven by the stream load generator."""
    with schema() as db:
        await asyncio.to_thread(migrate, db)
        devices = await ingest.provision_playproof(db, ingest.device_ids(args.devices))
        extra = ["--pipeline", url] if url else []
        servers = [_serve(db, extra) for _ in range(nodes)]
        urls = [s.start() for s in servers]
        nodes_pids = [s.pid for s in servers if s.pid]
        groups = {"ingest": lambda: nodes_pids, "nats": target.pids, "postgres": postgres_pids}
        meter = Meter(groups)
        try:
            groups = [devices[i::nodes] for i in range(nodes)]
            meter.begin()
            results = await asyncio.gather(
                *(
                    loadgen.run_stream(u, g, args.frame, args.duration, args.window)
                    for u, g in zip(urls, groups, strict=True)
                )
            )
            meter.end()
        finally:
            for s in servers:
                s.stop()
    label = target.label + (" pipeline" if url else " store path")
    return _ingest_row(label, nodes, results, meter)


def _serve(db: str, extra: list[str]) -> ingest.Server:
    server = ingest.playproof_server(db)
    server.cmd += extra
    return server


def _ingest_row(label: str, nodes: int, results: list[Any], meter: Meter) -> IngestRow:
    measured = sum(r.tally.accepted for r in results)
    seconds = max(r.tally.seconds for r in results)
    latencies = [x for r in results for x in r.tally.latencies]
    errors = sum(sum(r.errors.values()) for r in results)
    return IngestRow(
        label,
        nodes,
        measured / seconds,
        loadgen.percentile(latencies, 0.5) * 1000,
        loadgen.percentile(latencies, 0.99) * 1000,
        sum(r.stored for r in results),
        meter,
        errors,
    )


# --- loading ----------------------------------------------------------------------------


@dataclass
class LoadRow:
    """One drain: M loaders through a fresh consumer into a fresh schema."""

    loaders: int
    records: int
    seconds: float
    meter: Meter
    db_bytes: float = 0.0  # PostgreSQL bytes per record: tables, partitions, indexes

    @property
    def rate(self) -> float:
        """Records loaded per second."""
        return self.records / self.seconds


async def run_load(target: Target, url: str, loaders: int) -> LoadRow:
    """Drain everything the ingest runs published with M loaders."""
    consumer_url = f"{url}&consumer=bench{secrets.token_hex(4)}"
    settings = parse(consumer_url)
    with schema() as db:
        await asyncio.to_thread(migrate, db)
        procs = [LoaderProc(db, consumer_url) for _ in range(loaders)]
        loader_pids = lambda: [p.pid for p in procs if p.pid]  # noqa: E731
        meter = Meter({"loaders": loader_pids, "nats": target.pids, "postgres": postgres_pids})
        meter.begin()
        for proc in procs:
            proc.start()
        try:
            await wait_loaded(settings, 3600)
            meter.end()
            records = ingest.count_rows(db)
            size = db_size(db)
        finally:
            for proc in procs:
                proc.stop()
    return LoadRow(loaders, records, meter.seconds, meter, size / max(records, 1))


def db_size(db: str) -> int:
    """Bytes the schema's tables take, with their partitions, indexes and TOAST."""
    # VACUUM cannot run inside a transaction block.
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # settle the visibility map and free space map
        row = conn.execute(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
        ).fetchone()
    return int(row[0] or 0) if row else 0


# --- footprint ------------------------------------------------------------------------------


async def run_footprint(records: int) -> dict[str, float]:
    """Memory and disk a private nats-server spends per record held in the dedupe window."""
    from playproof.pipeline.sink import JetStreamSink
    from playproof.protocol import Record
    from playproof.rules import Context, Judge
    from playproof.stores.base import BatchWrite, Judged

    root = Path(tempfile.mkdtemp(prefix="pp-bench-nats-"))
    server = NatsServer(root)
    server.start()
    try:
        settings = parse(f"jetstream://{server.host}?name=foot&partitions=1&window=6h")
        sink = JetStreamSink(settings)
        await sink.open()
        rss0 = ingest.rss_mb(server.proc.pid) if server.proc else 0.0
        cpu0 = ingest.cpu_seconds("self")
        device = loadgen.Device("scr-foot", "-")
        for _ in range(records // 1000):
            decoded = decode_batch(loadgen.http_body(loadgen.take(device, 1000)))
            judge = Judge(Context("scr-foot", "store-1", decoded.sent_at, decoded.sent_at))
            judged = [Judged(r, judge(r)) for r in decoded.items if isinstance(r, Record)]
            write = BatchWrite("scr-foot", decoded.sent_at, decoded.sent_at, judged)
            await sink.commit([write])
        publish_us = 1e6 * (ingest.cpu_seconds("self") - cpu0) / records
        await asyncio.sleep(2)
        rss1 = ingest.rss_mb(server.proc.pid) if server.proc else 0.0
        js = sink._connected().js
        state = (await js.stream_info(settings.stream(0))).state
        await sink.close()
    finally:
        server.kill()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "records": records,
        "rss_bytes": (rss1 - rss0) * 1024 * 1024 / records,
        "disk_bytes": state.bytes / records,
        "publish_us": publish_us,
    }


# --- targets -------------------------------------------------------------------------------


class Target:
    """Where JetStream runs: the shared server, or a private three-node cluster."""

    def __init__(self, label: str, hosts: str, pids: Any, replicas: int) -> None:
        self.label = label
        self.hosts = hosts
        self.pids = pids
        self.replicas = replicas

    def url(self, partitions: int) -> str:
        """A pipeline URL with fresh stream names."""
        name = f"bench{secrets.token_hex(4)}"
        query = f"name={name}&partitions={partitions}&replicas={self.replicas}&ack_wait=60s"
        return f"jetstream://{self.hosts}?{query}"


def shared_target(hostport: str) -> Target:
    """The NATS server the machine already runs (R1)."""
    port = int(hostport.rsplit(":", 1)[1])
    return Target("R1", hostport, lambda: nats_pids(port), 1)


def cluster_target(cluster: NatsCluster) -> Target:
    """A private three-node cluster (R3)."""
    return Target(
        "R3",
        cluster.hosts,
        lambda: [n.proc.pid for n in cluster.nodes if n.proc and n.proc.poll() is None],
        3,
    )


# --- output ----------------------------------------------------------------------------------


def ingest_lines(rows: list[IngestRow]) -> list[str]:
    """Markdown table of the ingest runs."""
    lines = [
        "| JetStream | path | nodes | records/s | p50 / p99 ack ms | CPU µs/record: nodes | "
        "NATS | PostgreSQL | generator | rest of the machine | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, n = r.meter, r.records
        target, path = r.label.split(" ", 1)
        lines.append(
            f"| {target} | {path} | {r.nodes} | {r.rate:,.0f} | {r.p50_ms:.1f} / {r.p99_ms:.1f} | "
            f"{m.us_per('ingest', n):.0f} | {m.us_per('nats', n):.0f} | "
            f"{m.us_per('postgres', n):.0f} | {m.us_per('generator', n):.0f} | "
            f"{m.us_per('rest', n):.0f} | {r.errors} |"
        )
    return lines


def load_lines(rows: list[LoadRow]) -> list[str]:
    """Markdown table of the drains."""
    lines = [
        "| loaders | records | seconds | records/s | CPU µs/record: loaders | NATS | "
        "PostgreSQL | rest of the machine | PostgreSQL bytes/record |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, n = r.meter, r.records
        lines.append(
            f"| {r.loaders} | {n:,} | {r.seconds:.1f} | {r.rate:,.0f} | "
            f"{m.us_per('loaders', n):.0f} | {m.us_per('nats', n):.0f} | "
            f"{m.us_per('postgres', n):.0f} | {m.us_per('rest', n):.0f} | {r.db_bytes:.0f} |"
        )
    return lines


# --- main --------------------------------------------------------------------------------------


def ints(text: str) -> list[int]:
    """`1,2,3` as [1, 2, 3]."""
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nats", default="127.0.0.1:4222", help="the shared NATS server")
    p.add_argument("--nodes", type=ints, default=[1, 2, 3])
    p.add_argument("--loaders", type=ints, default=[1, 2, 3])
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--devices", type=int, default=60, help="stream connections in all")
    p.add_argument("--frame", type=int, default=20, help="records per stream frame")
    p.add_argument("--window", type=int, default=8, help="frames in flight per connection")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of each ingest run")
    p.add_argument("--footprint", type=int, default=200_000, help="records (0: skip)")
    p.add_argument("--cluster", action="store_true", help="also a private 3-node cluster, R3")
    p.add_argument("--quick", action="store_true", help="a smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.nodes, args.loaders, args.duration, args.footprint = [1, 2], [1, 2], 5.0, 20_000
    return args


async def main(args: argparse.Namespace) -> None:
    """Run everything and print the tables."""
    rows: list[IngestRow] = []
    loads: list[LoadRow] = []
    shared = shared_target(args.nats)
    rows.append(await run_ingest(args, shared, 1, ""))  # the store path, for comparison
    url = shared.url(args.partitions)
    for nodes in args.nodes:
        rows.append(await run_ingest(args, shared, nodes, url))
        print("\n".join(ingest_lines(rows[-1:])[2:]), flush=True)
    for loaders in args.loaders:
        loads.append(await run_load(shared, url, loaders))
        print("\n".join(load_lines(loads[-1:])[2:]), flush=True)
    await _delete(url)
    if args.cluster:
        rows += await _on_cluster(args)
    print("\n## ingest\n\n" + "\n".join(ingest_lines(rows)))
    print("\n## load\n\n" + "\n".join(load_lines(loads)))
    if args.footprint:
        foot = await run_footprint(args.footprint)
        print(
            f"\n## footprint ({foot['records']:,} records, window 6 h, R1)\n\n"
            f"NATS memory {foot['rss_bytes']:.0f} B/record, disk {foot['disk_bytes']:.0f} "
            f"B/record; publishing costs the node {foot['publish_us']:.0f} µs CPU/record"
        )


async def _on_cluster(args: argparse.Namespace) -> list[IngestRow]:
    cluster = NatsCluster()
    try:
        await asyncio.to_thread(cluster.start)
        target = cluster_target(cluster)
        url = target.url(args.partitions)
        found = [await run_ingest(args, target, n, url) for n in args.nodes[:2]]
        await _delete(url)
        return found
    finally:
        cluster.destroy()


async def _delete(url: str) -> None:
    from playproof.pipeline.jetstream import JetStream

    js = await JetStream.connect(parse(url), "bench")
    try:
        await js.delete_streams()
    finally:
        await js.close()


if __name__ == "__main__":
    uvloop.run(main(parse_args()))
