"""Ingest benchmark: start the service (and optionally the baseline), drive it, print figures.

    .venv/bin/python bench/ingest.py --quick            # a smoke run, under a minute
    .venv/bin/python bench/ingest.py --baseline         # the full run, with the ratio
    .venv/bin/python bench/ingest.py --signed --quick   # signed (v2) against unsigned (v1)

The generator and the server run on the same machine and share its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from time import perf_counter

import uvloop
from rich.console import Console
from rich.table import Table

import loadgen
import playproof
from loadgen import Device, Result, count_rows
from playproof.server import admin
from signed import provision_signed

BENCH = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
console = Console(width=240)


# --- servers ---------------------------------------------------------------------


class Server:
    """A service in its own process, started with a command that announces its URL."""

    def __init__(
        self, name: str, cmd: list[str], ready: str, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.cmd = cmd
        self.env = {**os.environ, **(env or {})}
        self.ready = re.compile(ready.encode() + rb" (http://\S+)")
        self.log: deque[str] = deque(maxlen=40)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> str:
        """Start the process and return the URL it announces."""
        self.proc = subprocess.Popen(self.cmd, stderr=subprocess.PIPE, env=self.env)
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.decode(errors="replace").rstrip())
            match = self.ready.search(line)
            if match:
                threading.Thread(target=self._pump, daemon=True).start()
                return match.group(1).decode()
        raise RuntimeError(f"{self.name} did not start:\n" + "\n".join(self.log))

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.decode(errors="replace").rstrip())

    @property
    def pid(self) -> int | None:
        """The server's process id."""
        return self.proc.pid if self.proc else None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# The per-device rate limits (requests and bytes) are policy, not capacity: a benchmark
# device sends far faster than a screen does, so the limits are lifted for the run.
UNLIMITED = {
    "PLAYPROOF_LIMITS_DEVICE_RATE": "1000000",
    "PLAYPROOF_LIMITS_DEVICE_BURST": "1000000",
    "PLAYPROOF_LIMITS_DEVICE_BYTES_RATE": str(1 << 40),
    "PLAYPROOF_LIMITS_DEVICE_BYTES_BURST": str(1 << 40),
}


def playproof_server(db_url: str) -> Server:
    """`playproof serve` on a free port, without the per-device rate limit."""
    cmd = [sys.executable, "-m", "playproof", "serve", "--db", db_url, "--port", "0"]
    return Server("playproof", [*cmd, "--log-level", "warning"], "playproof serving on", UNLIMITED)


def baseline_server(db_path: Path) -> Server:
    """The FastAPI + SQLAlchemy baseline on a free port."""
    cmd = [sys.executable, str(BENCH / "baseline" / "run.py"), "--db", str(db_path), "--port", "0"]
    return Server("baseline", cmd, "baseline serving on")


# --- provisioning and counting ---------------------------------------------------


def device_ids(count: int) -> list[str]:
    """Device ids unique to this run, so that a reused database never sees them twice."""
    tag = secrets.token_hex(3)
    return [f"bench-{tag}-{i:04d}" for i in range(count)]


async def provision_playproof(db_url: str, ids: list[str]) -> list[Device]:
    """Register devices through playproof's admin API."""
    async with admin.opened(db_url) as store:
        return [Device(i, await admin.add_device(store, i, "store-1")) for i in ids]


def provision_baseline(db_path: Path, ids: list[str]) -> list[Device]:
    """Register devices in the baseline's token table."""
    sys.path.insert(0, str(BENCH))
    try:
        from baseline.db import provision
    except ImportError as exc:
        hint = f"--baseline needs the bench extra: pip install -e '.[bench]' ({exc})"
        raise SystemExit(hint) from None
    tokens = provision(db_path, ids)
    return [Device(i, tokens[i]) for i in ids]


# --- sampling the server -----------------------------------------------------------


def cpu_seconds(pid: int | str) -> float:
    """User plus system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def busy_seconds() -> float:
    """CPU time the whole machine has spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


@dataclass
class ProcProbe:
    """Samples CPU% (of one core) and peak RSS of the server, the generator and the rest."""

    pid: int | None
    cpu: float = float("nan")
    rss: float = float("nan")
    gen_cpu: float = float("nan")
    other_cpu: float = float("nan")
    _t0: float = 0.0
    _cpu0: float = 0.0
    _gen0: float = 0.0
    _busy0: float = 0.0
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def begin(self) -> None:
        """Note the CPU counters and start sampling RSS."""
        self._t0, self._gen0, self._busy0 = perf_counter(), cpu_seconds("self"), busy_seconds()
        if self.pid is not None:
            self._cpu0, self.rss = cpu_seconds(self.pid), rss_mb(self.pid)
            self._task = asyncio.create_task(self._sample(self.pid))

    async def _sample(self, pid: int) -> None:
        while True:
            await asyncio.sleep(0.1)
            self.rss = max(self.rss, rss_mb(pid))

    def end(self) -> None:
        """Turn the counters into percentages of one core."""
        elapsed = perf_counter() - self._t0
        self.gen_cpu = 100 * (cpu_seconds("self") - self._gen0) / elapsed
        busy = 100 * (busy_seconds() - self._busy0) / elapsed
        if self.pid is not None and self._task is not None:
            self._task.cancel()
            self.cpu = 100 * (cpu_seconds(self.pid) - self._cpu0) / elapsed
            # Everything else the machine did meanwhile: other people's work is noise.
            self.other_cpu = max(0.0, busy - self.cpu - self.gen_cpu)


# --- running -----------------------------------------------------------------------


@dataclass
class Row:
    """One measured scenario on one target."""

    target: str
    result: Result
    probe: ProcProbe


@dataclass
class Plan:
    """What to run, from the command line."""

    scenarios: list[str]
    duration: float
    clients: list[int]
    frames: list[int]
    connections: list[int]
    window: int
    paced_connections: int
    paced_seconds: int

    @property
    def devices(self) -> int:
        """How many devices the plan needs at most at once."""
        wanted = [1]
        if "http" in self.scenarios:
            wanted += self.clients
        if "stream" in self.scenarios:
            wanted += self.connections
        if "paced" in self.scenarios:
            wanted.append(self.paced_connections)
        return max(wanted)


Step = Callable[[loadgen.Probe], Awaitable[Result]]


def steps(plan: Plan, url: str, devices: list[Device]) -> Iterator[Step]:
    """The scenario runs of a plan, in order, each waiting for its probe."""
    if "http" in plan.scenarios:
        for c in plan.clients:
            yield partial(loadgen.run_http, url, devices[:c], 1000, plan.duration)
    if "stream" in plan.scenarios:
        for f in plan.frames:
            for n in plan.connections:
                yield partial(loadgen.run_stream, url, devices[:n], f, plan.duration, plan.window)
    if "paced" in plan.scenarios:
        paced = devices[: plan.paced_connections]
        yield partial(loadgen.run_paced, url, paced, plan.paced_seconds)


async def drive(
    target: str, plan: Plan, url: str, pid: int | None, devices: list[Device]
) -> list[Row]:
    """Run every scenario of the plan against one target, printing each as it finishes."""
    rows = []
    for step in steps(plan, url, devices):
        probe = ProcProbe(pid)
        row = Row(target, await step(probe), probe)
        console.print(f"  {target:9} {summary(row)}", highlight=False)
        rows.append(row)
    return rows


def summary(row: Row) -> str:
    """A one-line account of a row, for progress output."""
    r = row.result
    errors = sum(r.errors.values())
    return (
        f"{r.scenario:6} {r.params:32} {r.rate:>10,.0f} rec/s  p50 {r.latency_ms(0.5):8.1f} ms"
        f"  p99 {r.latency_ms(0.99):8.1f} ms  errors {errors}"
    )


# --- output ------------------------------------------------------------------------


def fmt_ms(value: float) -> str:
    """Milliseconds with sensible precision."""
    return f"{value:.2f}" if value < 10 else f"{value:,.0f}"


def columns(row: Row) -> list[str]:
    """The table cells of one row."""
    r, p = row.result, row.probe
    lag = loadgen.percentile(r.tally.lags, 0.99) * 1000 if r.tally.lags else float("nan")
    return [
        row.target,
        r.scenario,
        r.params,
        f"{r.tally.seconds:.1f}",
        f"{r.tally.accepted:,}",
        f"{r.rate:,.0f}",
        fmt_ms(r.latency_ms(0.5)),
        fmt_ms(r.latency_ms(0.99)),
        fmt_ms(r.latency_ms(1.0)),
        f"{sum(r.errors.values()):,}",
        f"{p.cpu:.0f}%",
        cpu_per_record(row),
        f"{p.rss:.0f}",
        f"{p.gen_cpu:.0f}%",
        f"{p.other_cpu:.0f}%",
        "" if lag != lag else fmt_ms(lag),
    ]


HEADERS = [
    "target",
    "scenario",
    "parameters",
    "s",
    "records",
    "records/s",
    "p50 ms",
    "p99 ms",
    "max ms",
    "errors",
    "srv CPU",
    "srv µs/rec",
    "srv RSS MiB",
    "gen CPU",
    "other CPU",
    "gen lag p99 ms",
]


def cpu_per_record(row: Row) -> str:
    """The server's CPU time per accepted record, in microseconds (all its threads)."""
    r, p = row.result, row.probe
    if not r.tally.accepted or p.cpu != p.cpu:
        return ""
    return f"{p.cpu / 100 * r.tally.seconds / r.tally.accepted * 1e6:,.0f}"


def signed_lines(rows: list[Row]) -> list[str]:
    """Signed ingest against unsigned, scenario by scenario (--signed)."""
    plain = {(r.result.scenario, r.result.params): r for r in rows if r.target == "playproof"}
    lines = []
    for row in rows:
        key = (row.result.scenario, row.result.params)
        if row.target != "signed" or key not in plain:
            continue
        v1, v2 = plain[key], row
        lines.append(
            f"{key[0]} {key[1]}: signed {v2.result.rate:,.0f} rec/s, "
            f"{cpu_per_record(v2)} µs CPU/rec; unsigned {v1.result.rate:,.0f} rec/s, "
            f"{cpu_per_record(v1)} µs CPU/rec"
        )
    return lines


def ratio_lines(rows: list[Row]) -> list[str]:
    """Our figures as a multiple of the baseline's, scenario by scenario."""
    base = {(r.result.scenario, r.result.params): r.result for r in rows if r.target == "baseline"}
    lines = []
    for row in rows:
        ours, key = row.result, (row.result.scenario, row.result.params)
        if row.target != "playproof" or key not in base:
            continue
        b = base[key]
        speed = ours.rate / b.rate if b.rate else float("inf")
        p99 = b.latency_ms(0.99) / ours.latency_ms(0.99)
        than = f"{p99:,.1f}× lower" if p99 >= 1 else f"{1 / p99:,.1f}× higher"
        lines.append(
            f"{ours.scenario} {ours.params}: {ours.rate:,.0f} rec/s vs baseline {b.rate:,.0f} "
            f"rec/s = {speed:,.1f}×; p99 {fmt_ms(ours.latency_ms(0.99))} ms vs "
            f"{fmt_ms(b.latency_ms(0.99))} ms = {than}"
        )
    return lines


def print_table(rows: list[Row]) -> None:
    """The results as a rich table."""
    table = Table(*HEADERS, title="ingest benchmark")
    for row in rows:
        table.add_row(*columns(row))
    console.print(table)


def markdown(rows: list[Row]) -> str:
    """The results as a Markdown table."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(columns(row)) + " |" for row in rows]
    return "\n".join(lines)


def print_errors(rows: list[Row]) -> None:
    """Every non-accepted ack and failed request, by kind."""
    for row in rows:
        for what, n in row.result.errors.most_common(8):
            console.print(
                f"[red]error[/] {row.target} {row.result.scenario} {row.result.params}: "
                f"{n:,} × {what}",
                highlight=False,
            )


# --- targets -----------------------------------------------------------------------


@dataclass
class Outcome:
    """A target's rows and whether its database holds exactly what was acknowledged."""

    rows: list[Row]
    counted_ok: bool


def show_log(server: Server | None, rows: list[Row]) -> None:
    """The tail of the server's log, when something went wrong."""
    if server and any(r.result.errors for r in rows) and server.log:
        console.print(f"last lines of the {server.name} log:", highlight=False)
        console.print("\n".join(server.log), highlight=False, markup=False)


def check_count(name: str, db_url: str, before: int, rows: list[Row]) -> bool:
    """Compare the rows added to the database with the records acknowledged accepted."""
    stored = count_rows(db_url) - before
    accepted = sum(r.result.stored for r in rows)
    ok = stored == accepted
    colour = "green" if ok else "red"
    console.print(
        f"[{colour}]{name}: database gained {stored:,} impressions; "
        f"{accepted:,} were acknowledged accepted[/]",
        highlight=False,
    )
    return ok


async def run_playproof(
    args: argparse.Namespace, plan: Plan, workdir: Path, signed: bool = False
) -> Outcome:
    """Provision, start (unless --server) and drive our service (`signed`: version 2)."""
    db_url = args.db or f"sqlite:///{workdir / 'playproof.db'}"
    provision = provision_signed if signed else provision_playproof
    devices = await provision(db_url, device_ids(plan.devices))
    for device in devices:
        device.screenshots = not args.no_screenshots
    before = count_rows(db_url)
    server = None if args.server else playproof_server(db_url)
    url = server.start() if server else args.server
    pid = server.pid if server else args.server_pid
    console.print(f"playproof at {url} (pid {pid}), db {db_url}", highlight=False)
    target = "signed" if signed else "playproof"
    try:
        rows = await drive(target, plan, url, pid, devices)
    finally:
        if server:
            server.stop()
    show_log(server, rows)
    return Outcome(rows, check_count(target, db_url, before, rows))


async def run_baseline(plan: Plan, workdir: Path) -> Outcome:
    """Provision, start and drive the baseline."""
    path = workdir / "baseline.db"
    devices = provision_baseline(path, device_ids(plan.devices))
    server = baseline_server(path)
    url = server.start()
    console.print(f"baseline at {url} (pid {server.pid}), db {path}", highlight=False)
    try:
        rows = await drive("baseline", plan, url, server.pid, devices)
    finally:
        server.stop()
    show_log(server, rows)
    return Outcome(rows, check_count("baseline", f"sqlite:///{path}", 0, rows))


def ints(text: str) -> list[int]:
    """A comma-separated list of integers."""
    return [int(x) for x in text.split(",") if x.strip()]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenario", default="http,stream,paced", help="any of http,stream,paced")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    p.add_argument("--quick", action="store_true", help="a fast smoke run (under a minute)")
    p.add_argument("--db", help="database URL (default: a fresh SQLite file in a temp dir)")
    p.add_argument("--server", help="drive an already running service at this URL (needs --db)")
    p.add_argument("--server-pid", type=int, help="its pid, to sample CPU and RSS")
    p.add_argument("--baseline", action="store_true", help="also run the FastAPI baseline")
    p.add_argument(
        "--signed",
        action="store_true",
        help="also run every scenario with signed (version 2) records, each device its own key",
    )
    p.add_argument("--clients", type=ints, default=[2, 4, 8], help="HTTP clients, e.g. 2,4,8")
    p.add_argument("--frames", type=ints, default=[1, 10, 100], help="records per stream frame")
    p.add_argument("--connections", type=ints, default=[1, 10, 100], help="stream connections")
    p.add_argument("--window", type=int, default=8, help="stream frames in flight per connection")
    p.add_argument("--paced-connections", type=int, default=1000)
    p.add_argument("--paced-seconds", type=int, help="paced run length (default: --duration)")
    p.add_argument(
        "--no-screenshots", action="store_true", help="records without a screenshot hash"
    )
    p.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = p.parse_args(argv)
    if args.server and not args.db:
        p.error("--server needs --db, to provision devices and count rows")
    return args


def make_plan(args: argparse.Namespace) -> Plan:
    """The plan the arguments ask for; --quick shrinks it."""
    scenarios = [s.strip() for s in args.scenario.split(",")]
    if args.quick:
        return Plan(scenarios, 3.0, [4], [100], [10], args.window, 200, 3)
    seconds = args.paced_seconds or round(args.duration)
    return Plan(
        scenarios,
        args.duration,
        args.clients,
        args.frames,
        args.connections,
        args.window,
        args.paced_connections,
        seconds,
    )


def code_version() -> str:
    """Where playproof is imported from and, for a git checkout, its commit."""
    src = Path(playproof.__file__).resolve().parent
    cmd = ["git", "-C", str(src), "describe", "--always", "--dirty"]
    try:
        found = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        found = "not a git checkout"
    return f"{src} ({found})"


async def main(args: argparse.Namespace) -> int:
    """Run the benchmark; exit status 1 if any ack was not `accepted` or a count is off."""
    plan = make_plan(args)
    console.print(
        f"code {code_version()}; {os.cpu_count()} cores, shared by the load generator and "
        "the server(s); CPU columns are % of one core",
        highlight=False,
    )
    with tempfile.TemporaryDirectory(prefix="playproof-bench-") as tmp:
        outcomes = [await run_playproof(args, plan, Path(tmp))]
        if args.signed:
            outcomes.append(await run_playproof(args, plan, Path(tmp), signed=True))
        if args.baseline:
            outcomes.append(await run_baseline(plan, Path(tmp)))
    rows = [row for o in outcomes for row in o.rows]
    print_table(rows)
    if args.markdown:
        print(markdown(rows))
    for line in ratio_lines(rows) + signed_lines(rows):
        console.print(line, highlight=False)
    print_errors(rows)
    clean = all(o.counted_ok for o in outcomes) and not any(r.result.errors for r in rows)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(uvloop.run(main(parse())))
