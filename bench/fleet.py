"""Fleet benchmark: the screens one process keeps at real time, and the service under them.

For each fleet size, a fresh `playproof serve` (real clock, SQLite in a temp
folder, or `--db postgresql://...`) and a fleet of screens playing one 10 s
item after another (one play each 10 s, no faults) through the real device
SDK, delivering over the stream. After the ramp and a settling time, a window
is measured:

- plays/s recorded against the fleet's due rate (size / 10), and whether the
  fleet keeps up (at least 98 % of it, event-loop lag p99 under 100 ms);
- the simulator's event-loop lag and its stream ack round trip (p50/p99);
- the service's ack latency, receipt to ack (its Prometheus histogram,
  interpolated within buckets), its CPU (% of one core) and RSS (peak);
- the simulator's CPU and RSS (all its worker processes);
- afterwards, the reconciliation (must be clean) and its speed.

    .venv/bin/python bench/fleet.py                       # 1000,2000,4000 in one process; 10000
    .venv/bin/python bench/fleet.py --sizes 2000 --target 0 --window 30   # quick

Each size runs with durable journals (`synchronous=FULL`, SQLite on the device
pool: what a real screen does) and with the simulation-only fast journals
(`--fast-journals`: no fsync, SQLite on the event loop's thread); `--journals`
picks.

Speed is measured, not asserted: figures go to BENCHMARKS.md (## Fleet).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from playproof.fleet import simulator
from playproof.fleet.live import Header, LineView, View
from playproof.fleet.plan import Faults, FleetOptions
from playproof.fleet.progress import Progress, quantile
from playproof.fleet.service import ServiceProcess
from playproof.fleet.simclock import SimClock

PLAY_S = 10
CLOCK_TICK = 100  # Linux jiffies per second, for /proc/<pid>/stat
BUCKET = re.compile(
    r'playproof_ack_latency_seconds_bucket\{le="([^"]+)",transport="stream"\} ([0-9.e+]+)'
)


# --- the service, watched from the outside ---------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    """A process's RSS (or VmHWM, its peak) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (the fleet's workers)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(proc.name))
    return found


def ack_buckets(url: str) -> dict[float, float]:
    """The service's stream ack latency histogram (from its `--metrics-listen` address)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {float(le): float(n) for le, n in BUCKET.findall(text)}


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The q-quantile (seconds) of what a histogram gained between two reads, interpolated."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return float("nan")
    rank, low, below = q * total, 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return low
            share = (rank - below) / (count - below) if count > below else 1.0
            return low + (bound - low) * share
        low, below = bound, count
    return low


@dataclass
class Window:
    """The measured window: it opens `settle` s after the last screen has started."""

    size: int
    settle: float
    length: float
    started_at: float = field(default_factory=time.time)
    ready_at: float | None = None
    latest: dict[int, Progress] = field(default_factory=dict)

    def bounds(self) -> tuple[float, float] | None:
        """The window's start and end (epoch s), once every screen has started."""
        if self.ready_at is None:
            return None
        return self.ready_at + self.settle, self.ready_at + self.settle + self.length

    def see(self, report: Progress) -> None:
        """Note a worker's report; open the window when every screen has started."""
        self.latest[report.worker] = report
        started = sum(p.started for p in self.latest.values())
        if self.ready_at is None and started >= self.size:
            self.ready_at = report.real_now


@dataclass
class Watch:
    """Samples of the service and the simulator, taken every second on a thread."""

    service_pid: int
    sim_pid: int
    window: Window
    service_rss: list[int] = field(default_factory=list)
    sim_rss: list[int] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def sim_cpu(self) -> float:
        """CPU seconds of the simulator and its workers."""
        return sum(cpu_seconds(p) for p in children(self.sim_pid)) + cpu_seconds(self.sim_pid)

    def run(self, metrics_url: str) -> None:
        """Sample until told to stop."""
        while not self.stop.wait(1.0):
            bounds, now = self.window.bounds(), time.time()
            if bounds is None or now < bounds[0] or "end" in self.cpu:
                continue
            if "start" not in self.cpu:
                self.cpu["start"], self.cpu["at"] = cpu_seconds(self.service_pid), now
                self.cpu["sim_start"] = self.sim_cpu()
                self.buckets["start"] = ack_buckets(metrics_url)
            self.service_rss.append(rss_kib(self.service_pid))
            self.sim_rss.append(sum(rss_kib(p) for p in children(self.sim_pid)))
            if now >= bounds[1]:
                self.cpu["end"] = cpu_seconds(self.service_pid)
                self.cpu["sim_end"] = self.sim_cpu()
                self.cpu["seconds"] = now - self.cpu["at"]
                self.buckets["end"] = ack_buckets(metrics_url)


# --- the fleet, seen from its reports ----------------------------------------------


@dataclass
class Samples:
    """What the workers reported during the measured window."""

    window: Window
    lag: list[float] = field(default_factory=list)
    round_trip: list[float] = field(default_factory=list)
    recorded: dict[int, list[tuple[float, int]]] = field(default_factory=dict)

    def take(self, report: Progress) -> None:
        """Keep a report's samples if it falls in the window."""
        self.window.see(report)
        bounds = self.window.bounds()
        if bounds is None or not bounds[0] <= report.real_now <= bounds[1]:
            return
        self.lag += report.lag_ms
        self.round_trip += report.round_trip_ms
        self.recorded.setdefault(report.worker, []).append((report.real_now, report.recorded))

    def plays_per_s(self) -> float:
        """Plays recorded per second over the window, all workers."""
        rate = 0.0
        for points in self.recorded.values():
            (t0, n0), (t1, n1) = points[0], points[-1]
            rate += (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        return rate


# --- one size ------------------------------------------------------------------------


def quiet_view(clock: SimClock, start_ms: int, options: FleetOptions) -> View:
    """Progress lines on stderr, every few seconds."""
    return LineView(
        Header(clock.speed, start_ms, options.duration_ms, "bench"), Console(stderr=True)
    )


def run_size(
    size: int, workers: int, fast: bool, args: argparse.Namespace, folder: Path
) -> dict[str, Any]:
    """Run one fleet size against a fresh service; its figures."""
    db = args.db or f"sqlite:///{folder / 'playproof.db'}"
    service = ServiceProcess(db, 0, folder / "service.log", "--metrics-listen", "127.0.0.1:0")
    url = service.start()
    ramp = max(5.0, size / 250)
    # Opening thousands of screens can take longer than planned on a busy machine:
    # the run lasts long enough for the window to open after the last one started.
    duration_s = 3 * ramp + 30 + args.settle + args.window
    options = FleetOptions(
        devices=size,
        duration_ms=round(duration_s * 1000),
        devices_dir=folder / "fleet",
        faults=Faults.none(),
        play_length=(PLAY_S * 1000, PLAY_S * 1000),
        ramp_s=ramp,
        drain_s=30.0,
        workers=workers,
        fast_journals=fast,
    )
    window = Window(size, args.settle, args.window)
    samples = Samples(window)
    watch = Watch(service.pid, _self_pid(), window)
    watcher = threading.Thread(target=watch.run, args=(service.metrics_url,), daemon=True)
    watcher.start()
    try:
        result = simulator.run(
            url, db, options, lambda c, s: quiet_view(c, s, options), on_report=samples.take
        )
        peak = rss_kib(service.pid, "VmHWM")
    finally:
        watch.stop.set()
        service.stop()
    row = figures(size, workers, samples, watch, result, peak)
    ready = "-" if window.ready_at is None else f"{window.ready_at - window.started_at:.0f} s"
    measured = "yes" if "end" in watch.cpu else "NO (run ended first)"
    return {"journals": "fast" if fast else "durable", **row, "all started after": ready,
            "window complete": measured}  # fmt: skip


def _self_pid() -> int:
    import os

    return os.getpid()


def figures(
    size: int,
    workers: int,
    samples: Samples,
    watch: Watch,
    result: simulator.RunResult,
    service_peak_kib: int,
) -> dict[str, Any]:
    """One row of the report."""
    due = size / PLAY_S
    rate = samples.plays_per_s()
    lag99 = quantile(samples.lag, 0.99) or 0.0
    seconds = watch.cpu.get("seconds", float("nan"))
    before, after = watch.buckets.get("start", {}), watch.buckets.get("end", {})
    rec = result.reconciliation
    service_cpu = watch.cpu.get("end", 0) - watch.cpu.get("start", 0)
    sim_cpu = watch.cpu.get("sim_end", 0) - watch.cpu.get("sim_start", 0)
    verdict = "clean" if rec.ok else "FAILED"
    return {
        "screens": size,
        "workers": workers or len(children(_self_pid())) or "auto",
        "plays/s": f"{rate:,.0f} / {due:,.0f}",
        "keeps up": "yes" if rate >= 0.98 * due and lag99 < 100 else "NO",
        "loop lag p50/p99 ms": _pair(quantile(samples.lag, 0.5), lag99),
        "stream rtt p50/p99 ms": _pair(
            quantile(samples.round_trip, 0.5), quantile(samples.round_trip, 0.99)
        ),
        "service ack p50/p99 ms": _pair(
            histogram_quantile(before, after, 0.5) * 1000,
            histogram_quantile(before, after, 0.99) * 1000,
        ),
        "service CPU %": f"{100 * service_cpu / seconds:.0f}",
        "service RSS MiB (peak)": f"{max(watch.service_rss, default=0) / 1024:.0f} "
        f"({service_peak_kib / 1024:.0f})",
        "simulator CPU %": f"{100 * sim_cpu / seconds:.0f}",
        "simulator RSS MiB": f"{max(watch.sim_rss, default=0) / 1024:,.0f}",
        "reconcile": f"{verdict}, {rec.rows:,} rows, {rec.rows_per_s:,.0f}/s",
    }


def _pair(a: float | None, b: float | None) -> str:
    return f"{a or 0:.1f} / {b or 0:.1f}"


def main() -> int:
    """Run every size, print the table; exit 1 if a reconciliation failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,2000,4000", help="fleet sizes in one process")
    parser.add_argument("--target", type=int, default=10_000, help="the fleet target (0: skip)")
    parser.add_argument("--target-workers", type=int, default=0, help="0: as descriptors need")
    parser.add_argument("--window", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds after the ramp")
    parser.add_argument("--db", default=None, help="database URL (default: SQLite in a temp dir)")
    parser.add_argument("--journals", default="durable,fast", help="durable, fast or both")
    args = parser.parse_args()
    modes = [m == "fast" for m in args.journals.split(",") if m]
    runs = [(int(s), 1, fast) for s in args.sizes.split(",") if s for fast in modes]
    if args.target:
        runs += [(args.target, args.target_workers, fast) for fast in modes]
    rows = []
    for size, workers, fast in runs:
        folder = Path(tempfile.mkdtemp(prefix=f"fleet-bench-{size}-"))
        try:
            rows.append(run_size(size, workers, fast, args, folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        print(rows[-1], file=sys.stderr)
    table = Table(title=f"fleet: one play each {PLAY_S} s per screen, real clock")
    for name in rows[0]:
        table.add_column(name)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console(width=250).print(table)
    return 0 if all(r["reconcile"].startswith("clean") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
