"""Device benchmark: recording latency, backlog drain, and the player agent's memory.

    .venv/bin/python bench/device.py              # all three, prints a table
    .venv/bin/python bench/device.py --plays 5000 --backlog 2880 --agent-seconds 20

1. record: one play = `start` + `end`, both durable (two fsync'd SQLite commits);
   latency p50/p99/max and process CPU per play, on a file in a temp folder. `floor`
   is the same two commits in plain sqlite3, inline: what the disk itself costs.
2. drain: a 4-hour backlog (2,880 records) recorded while the service is down,
   then the device opens against a real `playproof serve` (SQLite): time until
   every record is acknowledged, over the stream and over HTTP only.
3. agent: a real `playproof player` process at --speed 10 for a while: peak RSS.

Targets (DEVELOPERS.md / the issue): p99 under 2 ms, drain under 2 s, RSS under 60 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from playproof.device import Content, Device, DeviceConfig, UplinkConfig

CONTENT = Content(
    campaign_id="cmp-1",
    ad_group_id="ag-1",
    content_id="cnt-1",
    supplier_id="sup-1",
    expected_ms=5000,
)


def percentile(values: list[float], pct: float) -> float:
    """The pct-th percentile (nearest rank) of values."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


# --- 1. recording ---------------------------------------------------------------------------


async def bench_record(folder: Path, plays: int) -> dict[str, float]:
    """Latency and CPU of start+end, both durable."""
    config = DeviceConfig(device_id="bench-1", store_id="store-1", data_dir=folder / "rec")
    device = await Device.open(config, capture=None)
    for _ in range(50):  # warm up: imports, page cache, the shared pool's threads
        await (await device.start(CONTENT)).end()
    latencies = []
    cpu0 = time.process_time()
    for _ in range(plays):
        t0 = time.perf_counter()
        play = await device.start(CONTENT)
        await play.end()
        latencies.append((time.perf_counter() - t0) * 1000)
    cpu = (time.process_time() - cpu0) / plays * 1000
    await device.close()
    return {
        "plays": plays,
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
        "cpu_ms_per_play": cpu,
    }


def bench_floor(folder: Path, plays: int) -> dict[str, float]:
    """The disk's floor: two fsync'd SQLite commits per play, inline, no SDK at all."""
    import sqlite3

    conn = sqlite3.connect(folder / "floor.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, body BLOB)")
    body = b"x" * 600
    latencies = []
    for seq in range(plays):
        t0 = time.perf_counter()
        for sql, args in (("INSERT INTO t VALUES (?, ?)", (seq, body)),
                          ("UPDATE t SET body = ? WHERE seq = ?", (body, seq))):  # fmt: skip
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(sql, args)
            conn.execute("COMMIT")
        latencies.append((time.perf_counter() - t0) * 1000)
    conn.close()
    return {
        "plays": plays,
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 99),
    }


# --- 2. drain -------------------------------------------------------------------------------


class Service:
    """`playproof serve` on a SQLite file, in its own process."""

    def __init__(self, db_url: str) -> None:
        cmd = [sys.executable, "-m", "playproof", "serve", "--db", db_url, "--port", "0"]
        self.proc = subprocess.Popen([*cmd, "--log-level", "warning"], stderr=subprocess.PIPE)
        self.url = self._await_url()

    def _await_url(self) -> str:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            match = re.search(rb"playproof serving on (http://\S+)", line)
            if match:
                threading.Thread(target=self._drain, daemon=True).start()
                return match.group(1).decode()
        raise RuntimeError("the service did not start")

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for _ in self.proc.stderr:
            pass

    def stop(self) -> None:
        """SIGTERM and wait."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def add_device(db_url: str, device_id: str) -> str:
    """Register a device through the CLI; its token."""
    out = subprocess.run(
        [sys.executable, "-m", "playproof", "devices", "add", device_id, "--store-id", "store-1",
         "--db", db_url],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return out.stdout.strip().splitlines()[-1]


async def record_backlog(folder: Path, device_id: str, count: int) -> None:
    """Record `count` plays with no service configured: they wait in the journal."""
    config = DeviceConfig(device_id=device_id, store_id="store-1", data_dir=folder)
    device = await Device.open(config, capture=None)
    for _ in range(count):
        await (await device.start(CONTENT)).end()
    await device.close()


async def drain_once(
    folder: Path, url: str, token: str, device_id: str, transports: tuple[str, ...]
) -> float:
    """Open the device against the service; seconds until its journal is empty."""
    uplink = UplinkConfig(server_url=url, token=token, transports=transports)
    config = DeviceConfig(device_id=device_id, store_id="store-1", data_dir=folder, uplink=uplink)
    t0 = time.perf_counter()
    device = await Device.open(config, capture=None)
    assert device.uplink is not None
    if not await device.uplink.drain(120):
        raise RuntimeError("the backlog did not drain")
    elapsed = time.perf_counter() - t0
    await device.close()
    return elapsed


async def bench_drain(folder: Path, backlog: int) -> dict[str, float]:
    """Drain a backlog over the stream and over HTTP alone."""
    db_url = f"sqlite:///{folder / 'service.db'}"
    service = Service(db_url)
    results: dict[str, float] = {"records": backlog}
    try:
        for name, transports in (("stream", ("stream", "http")), ("http", ("http",))):
            device_id = f"bench-{name}"
            token = add_device(db_url, device_id)
            await record_backlog(folder / device_id, device_id, backlog)
            results[f"{name}_s"] = await drain_once(
                folder / device_id, service.url, token, device_id, transports
            )
    finally:
        service.stop()
    return results


# --- 3. agent memory ------------------------------------------------------------------------


def rss_kb(pid: int, field: str) -> int:
    """VmRSS or VmHWM of a process, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def bench_agent(folder: Path, seconds: float) -> dict[str, float]:
    """Run a real player process at 10x and sample its memory."""
    db_url = f"sqlite:///{folder / 'agent.db'}"
    service = Service(db_url)
    token = add_device(db_url, "bench-agent")
    playlist = folder / "playlist.json"
    items = [
        {"campaign_id": "cmp-1", "ad_group_id": "ag-1", "content_id": f"cnt-{i}",
         "supplier_id": "sup-1", "duration_ms": 5000, "skip_probability": 0.1}
        for i in range(4)
    ]  # fmt: skip
    playlist.write_text(json.dumps({"items": items}))
    cmd = [sys.executable, "-m", "playproof", "player", "--server", service.url, "--token", token,
           "--device-id", "bench-agent", "--store-id", "store-1", "--data-dir",
           str(folder / "agent"), "--playlist", str(playlist), "--speed", "10",
           "--log-level", "warning"]  # fmt: skip
    player = subprocess.Popen(cmd)
    samples = []
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.5)
            samples.append(rss_kb(player.pid, "VmRSS"))
        peak = rss_kb(player.pid, "VmHWM")
    finally:
        player.send_signal(signal.SIGTERM)
        player.wait(30)
        service.stop()
    plays = int(subprocess.run(
        [sys.executable, "-c", "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("
         "'select count(*) from impressions').fetchone()[0])", db_url.removeprefix("sqlite:///")],
        capture_output=True, text=True, check=True).stdout)  # fmt: skip
    return {
        "seconds": seconds,
        "plays_delivered": plays,
        "rss_mb_median": statistics.median(samples) / 1024,
        "rss_mb_peak": peak / 1024,
    }


# --- main -----------------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plays", type=int, default=5000, help="plays for the latency run")
    parser.add_argument("--backlog", type=int, default=2880, help="records in the backlog")
    parser.add_argument("--agent-seconds", type=float, default=20.0, help="player run time")
    parser.add_argument("--only", default="record,drain,agent", help="which parts to run")
    return parser.parse_args(argv)


def show(name: str, figures: dict[str, float]) -> None:
    """Print one result line."""
    parts = [f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()]
    print(f"{name:8} " + "  ".join(parts), flush=True)


def main(argv: list[str] | None = None) -> None:
    """Run the selected parts and print their figures."""
    args = parse(argv)
    parts = set(args.only.split(","))
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}", flush=True)
    with tempfile.TemporaryDirectory(
        prefix="pp-bench-device-", dir=os.environ.get("BENCH_DIR")
    ) as tmp:
        folder = Path(tmp)
        if "record" in parts:
            show("floor", bench_floor(folder, args.plays))
            show("record", asyncio.run(bench_record(folder, args.plays)))
        if "drain" in parts:
            show("drain", asyncio.run(bench_drain(folder, args.backlog)))
        if "agent" in parts:
            show("agent", bench_agent(folder, args.agent_seconds))


if __name__ == "__main__":
    main()
