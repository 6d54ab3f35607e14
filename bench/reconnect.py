"""Reconnect: from the service answering again to a device's outage backlog all committed.

    .venv/bin/python bench/reconnect.py                      # 10 rounds, 12 s outages
    .venv/bin/python bench/reconnect.py --rounds 3 --outage 6 --plays 20
    .venv/bin/python bench/reconnect.py --rounds 5 --cap 60     # the old cap, to compare

A real device (the SDK, `Device.open`, the default `UplinkConfig`: backoff base 0.5 s,
cap 5 s, full jitter) delivers to a real `playproof serve` (SQLite) on a fixed port.
Each round: the device's queue is empty; the service is killed (SIGKILL); the device
records `--plays` plays during `--outage` seconds (long enough for its backoff to reach
the cap); the service is started again on the same port. Measured from the first 200
of `/healthz` (polled every 10 ms from the moment the process is started) until the
device's journal holds nothing unacknowledged, i.e. the whole backlog committed (the
service acknowledges only what it has committed); the database is checked for every
play exactly once. Prints each round and min / median / max, and the cap.
Figures go to BENCHMARKS.md ("Reconnect") with the command and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from tests.device.helpers import content, query  # noqa: E402
from tests.support import ServerProcess, free_port, provision  # noqa: E402

from playproof.device import Device, DeviceConfig, UplinkConfig  # noqa: E402

DEVICE = "scr-reconnect"
POLL_S = 0.01


async def record(device: Device, count: int, spread_s: float) -> None:
    """`count` short plays, spread over `spread_s` seconds."""
    for _ in range(count):
        play = await device.start(content(expected_ms=100))
        await play.end()
        await asyncio.sleep(spread_s / count)


async def queued(device: Device) -> int:
    """Records in the device's journal not yet acknowledged."""
    return (await device.journal.stats()).queue_depth


async def until_empty(device: Device, limit_s: float = 120.0) -> float:
    """Wait until the journal is empty; the monotonic time it was first seen so."""
    deadline = time.monotonic() + limit_s
    while await queued(device):
        if time.monotonic() > deadline:
            raise AssertionError("the backlog was not committed in time")
        await asyncio.sleep(POLL_S)
    return time.monotonic()


async def until_healthy(url: str, limit_s: float = 60.0) -> float:
    """Poll /healthz; the monotonic time of the first 200."""
    deadline = time.monotonic() + limit_s
    async with httpx.AsyncClient(timeout=1.0) as http:
        while time.monotonic() < deadline:
            try:
                if (await http.get(url + "/healthz")).status_code == 200:
                    return time.monotonic()
            except httpx.HTTPError:
                pass
            await asyncio.sleep(POLL_S)
    raise AssertionError("the service did not come back")


async def one_round(
    device: Device, server: ServerProcess, args: argparse.Namespace
) -> tuple[float, int, str]:
    """Kill, record through the outage, restart; (delay, backlog size, transport)."""
    server.kill()
    await record(device, args.plays, args.outage)
    backlog = await queued(device)
    starting = asyncio.create_task(asyncio.to_thread(server.start))
    healthy_at = await until_healthy(f"http://127.0.0.1:{server.port}")
    done_at = await until_empty(device)
    await starting
    transport = device.uplink.state if device.uplink else "none"
    return done_at - healthy_at, backlog, transport


async def run(args: argparse.Namespace, tmp: Path) -> list[float]:
    db = f"sqlite:///{tmp}/reconnect.db"
    token = provision(db, DEVICE)
    port = free_port()
    server = ServerProcess(db, port=port)
    server.start()
    server.url = f"http://127.0.0.1:{port}"
    uplink = UplinkConfig(server_url=server.url, token=token, backoff_cap_s=args.cap)
    print(
        f"device: default uplink, backoff base {uplink.backoff_base_s} s, "
        f"cap {uplink.backoff_cap_s} s (full jitter), transports {uplink.transports}"
    )
    config = DeviceConfig(device_id=DEVICE, store_id="store-1", data_dir=tmp / "dev", uplink=uplink)
    device = await Device.open(config, capture=None)
    delays = []
    try:
        await record(device, 5, 0.5)
        await until_empty(device)
        for n in range(args.rounds):
            delay, backlog, transport = await one_round(device, server, args)
            delays.append(delay)
            print(
                f"round {n + 1}: backlog {backlog} plays, committed {delay:.2f} s after "
                f"/healthz answered (then on {transport})",
                flush=True,
            )
    finally:
        await device.close(flush_timeout_s=1.0)
        server.kill()
    sql = "SELECT seq, count(*) FROM impressions WHERE device_id = ? GROUP BY seq"
    rows = query(db, sql, DEVICE)
    expected = 5 + args.rounds * args.plays
    doubled = sum(1 for _, n in rows if n > 1)
    print(f"stored: {len(rows)} of {expected} plays, {doubled} more than once")
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--outage", type=float, default=12.0, help="seconds the service is down")
    parser.add_argument("--plays", type=int, default=30, help="plays recorded during an outage")
    parser.add_argument(
        "--cap", type=float, default=UplinkConfig.backoff_cap_s, help="the device's backoff cap (s)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        delays = asyncio.run(run(args, Path(tmp)))
    print(
        f"reconnect: {len(delays)} rounds, delay min / median / max "
        f"{min(delays):.2f} / {statistics.median(delays):.2f} / {max(delays):.2f} s"
    )


if __name__ == "__main__":
    main()
