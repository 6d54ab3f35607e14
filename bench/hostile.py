"""Hostile load: what a flood costs a well-behaved device, in latency, and the service, in memory.

    .venv/bin/python bench/hostile.py                  # both scenarios
    .venv/bin/python bench/hostile.py --scenario auth --seconds 20

`auth`: random device tokens from 127.0.0.1, 32 at a time, as fast as the service
answers; a registered device on 127.0.0.2 posts one-record batches, 20 a second,
first alone, then during the flood. Prints its latency either way, the flood's
answers and how many token lookups reached the store.

`flood`: 50 tokens x 4 stream connections push 1 MiB frames as fast as the service
reads them (tests/faults/test_backpressure.py, for longer); the same device posts
meanwhile. Prints the service's peak RSS against the ceiling of docs/operators.md,
the frames' answers, and the device's latency.

Figures go to RELIABILITY.md ("Hostile and malformed input") with the command.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.device.helpers import impressions  # noqa: E402
from tests.faults.test_auth_flood import flood as auth_flood  # noqa: E402
from tests.faults.test_auth_flood import from_address, lookups  # noqa: E402
from tests.faults.test_backpressure import MIB, flood_frame, rss  # noqa: E402
from tests.faults.test_backpressure import flood as frame_flood  # noqa: E402
from tests.server.reporting import operator_token  # noqa: E402
from tests.support import ServerProcess, envelope, make_record, provision  # noqa: E402

GOOD = "scr-bench-good"
PACE_S = 0.05  # under the device rate limit (50 a second), far above a screen's


def summary(latencies: list[float]) -> str:
    """p50 / p99 / max in milliseconds."""
    ordered = sorted(latencies)
    pick = [ordered[int(q * (len(ordered) - 1))] for q in (0.5, 0.99)]
    return " / ".join(f"{v * 1000:.1f}" for v in [*pick, ordered[-1]]) + " ms"


async def good_device(url: str, token: str, seconds: float, first_seq: int) -> list[float]:
    """One-record batches from 127.0.0.2, 20 a second for `seconds`; each one's latency."""
    latencies = []
    seq = first_seq
    deadline = time.monotonic() + seconds
    async with from_address(url, "127.0.0.2", token) as http:
        while time.monotonic() < deadline:
            await asyncio.sleep(PACE_S)
            body = envelope([make_record(device_id=GOOD, seq=seq)], GOOD)
            started = time.perf_counter()
            answer = await http.post("/v1/impressions/batch", json=body)
            latencies.append(time.perf_counter() - started)
            assert answer.status_code == 200, answer.text
            seq += 1
    return latencies


async def auth(server: ServerProcess, token: str, ops: str, seconds: float) -> None:
    alone = await good_device(server.url, token, seconds, 1)
    before = lookups(server, ops)
    seen: Counter[int] = Counter()
    attacker = asyncio.create_task(auth_flood(server.url, "127.0.0.1", 10**9, seen))
    started = time.monotonic()
    during = await good_device(server.url, token, seconds, len(alone) + 1)
    rate = sum(seen.values()) / (time.monotonic() - started)
    attacker.cancel()
    spent = lookups(server, ops) - before
    print(f"auth: device alone      {len(alone)} batches, {summary(alone)}")
    print(f"auth: device in flood   {len(during)} batches, {summary(during)}")
    print(f"auth: flood             {rate:.0f} requests/s, answers {dict(seen)}")
    print(f"auth: store             {spent:.0f} token lookups during the flood")
    stored = len(impressions(server.db_url, GOOD))
    print(f"auth: stored            {stored} of {len(alone) + len(during)} of the device's plays")


async def flood(server: ServerProcess, token: str, seconds: float) -> None:
    assert server.proc is not None
    tokens = [provision(server.db_url, f"scr-bench-flood-{i}") for i in range(50)]
    url = server.url.replace("http://", "ws://") + "/v1/stream"
    seen: Counter[str] = Counter()
    flooders = [
        asyncio.create_task(frame_flood(url, tokens[i], flood_frame(f"scr-bench-flood-{i}"), seen))
        for i in range(50)
        for _ in range(4)
    ]
    first = len(impressions(server.db_url, GOOD)) + 1
    during = await good_device(server.url, token, seconds, first)
    for task in flooders:
        task.cancel()
    await asyncio.gather(*flooders, return_exceptions=True)
    peak = rss(server.proc.pid)[1]
    ceiling = 128 + 3 * 64 + 4 * 201
    print(f"flood: peak RSS         {peak / MIB:.0f} MiB (ceiling {ceiling} MiB)")
    print(f"flood: frames           {dict(seen)}")
    print(f"flood: device in flood  {len(during)} batches, {summary(during)}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="auth,flood")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{tmp}/hostile.db"
        token = provision(db, GOOD)
        ops = operator_token(db, "ops-bench")
        with ServerProcess(db) as server:
            if "auth" in args.scenario:
                await auth(server, token, ops, args.seconds)
        with ServerProcess(db) as server:  # afresh: the auth flood spent 127.0.0.1's failures
            if "flood" in args.scenario:
                await flood(server, token, args.seconds)


if __name__ == "__main__":
    asyncio.run(main())
