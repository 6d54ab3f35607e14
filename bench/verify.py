"""Verification benchmark: decisions per second, and screenshots checked per second.

    .venv/bin/python bench/verify.py                      # SQLite and PostgreSQL
    .venv/bin/python bench/verify.py --store sqlite --screens 1000 --plays 20

Three figures, each with a reference measured in the same run:

1. Decisions per second without images: a fleet of screens, each with a run of
   10-second plays (some overlapping, some of an unbooked campaign, a daily cap),
   committed through the store's own commit path, then decided by the real
   verifier (`server/verifier.py`) until nothing is pending. Reference: the same
   rows' `verification` column set by one bare UPDATE per screen, the least any
   decision writes.
2. Screenshots checked per second on a fixed input: a 1920x1080 JPEG at quality
   85, fingerprinted as the verifier does (decoded downscaled, perceptual hash,
   blank test). Reference: decoding the same JPEG at full size, no hash.
3. The verifier keeping up with a 1,000-screen fleet in real time on that input:
   every play of a fleet of 10-second plays names a fresh screenshot (distinct
   JPEGs uploaded as blobs); decisions per second including the fingerprinting,
   against the fleet's rate (1,000 screens / 10 s = 100 plays a second).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import random
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from PIL import Image, ImageDraw

from playproof import imaging
from playproof.catalog import Catalog, Change, check_references, parse_catalog
from playproof.catalog_merge import merge
from playproof.config import Limits
from playproof.protocol import Record, seal
from playproof.rules import Context, Judge, judge_item
from playproof.server.verifier import Verifier
from playproof.stores import open_store
from playproof.stores.base import BatchWrite, DeviceInfo, Judged, Store

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
START = int(datetime(2026, 12, 2, 9, tzinfo=UTC).timestamp() * 1000)
PLAY_MS = 10_000
CATALOG = {
    "suppliers": [{"supplier_id": "sup-1", "name": "Acme", "currency": "EUR"}],
    "stores": [{"store_id": "store-1", "time_zone": "Europe/London"}],
    "contents": [{"content_id": "cnt-1", "expected_ms": PLAY_MS}],
    "campaigns": [
        {
            "campaign_id": "cmp-1",
            "supplier_id": "sup-1",
            "flight": {"from": "2026-12-01", "to": "2027-01-01"},
            "cap": {"plays_per_screen_per_day": 5000},
            "ad_groups": [{"ad_group_id": "ag-1", "contents": ["cnt-1"]}],
            "price": {"model": "per_play", "amount": "0.01", "currency": "EUR"},
        }
    ],
}


def jpeg(seed: int) -> bytes:
    """A 1920x1080 JPEG at quality 85 with a pattern of its own."""
    rng = random.Random(seed)
    image = Image.new("RGB", (1920, 1080), (rng.randrange(256), 40, 90))
    draw = ImageDraw.Draw(image)
    for _ in range(60):
        x, y = rng.randrange(1800), rng.randrange(1000)
        color = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw.rectangle((x, y, x + rng.randrange(40, 300), y + rng.randrange(20, 200)), fill=color)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def plays(device: str, count: int, shots: list[str] | None) -> list[Record]:
    rng = random.Random(device)
    start, records = START, []
    for seq in range(1, count + 1):
        start += PLAY_MS + rng.choice((0, 500, 1000, -2000))  # now and then an overlap
        campaign = "cmp-1" if rng.random() < 0.9 else "cmp-unbooked"
        sha = shots[seq - 1] if shots else None
        records.append(
            seal(
                Record(
                    v=1,
                    device_id=device,
                    journal_id="j-1",
                    seq=seq,
                    campaign_id=campaign,
                    ad_group_id="ag-1",
                    content_id="cnt-1",
                    store_id="store-1",
                    supplier_id="sup-1",
                    start_ts=start,
                    end_ts=start + PLAY_MS,
                    duration_ms=PLAY_MS,
                    expected_ms=PLAY_MS,
                    end_reason="completed",
                    clock_offset_ms=0,
                    clock_synced=True,
                    screenshot_sha256=sha,
                    screenshot_at_ms=PLAY_MS // 2 if sha else None,
                )
            )
        )
    return records


async def seed(store: Store, screens: int, count: int, shots: dict[str, list[str]]) -> int:
    incoming = parse_catalog(__import__("json").dumps(CATALOG).encode())

    def update(current: Catalog) -> tuple[Catalog, list[Change]]:
        merged, changes = merge(current, incoming, False)
        check_references(merged)
        return merged, changes

    await store.update_catalog(update, START)
    received = START + (count + 2) * PLAY_MS
    total = 0
    for s in range(screens):
        device = f"scr-{s:05d}"
        await store.add_device(DeviceInfo(device, "store-1", START, None), f"h-{device}")
        records = plays(device, count, shots.get(device))
        judge = Judge(Context(device, "store-1", received, received))
        judged = [Judged(r, judge_item(r, judge)) for r in records]
        await store.commit([BatchWrite(device, received, received, judged)])
        total += len(records)
    return total


async def decide_all(store: Store, now: int) -> float:
    verifier = Verifier(store, lambda: now, limits=Limits(verify_settle_ms=0, verify_batch=500))
    started = time.perf_counter()
    await verifier.drain()
    return time.perf_counter() - started


async def bare_updates(store: Store, screens: int) -> float:
    """The reference: one UPDATE per screen setting every play's verification."""
    started = time.perf_counter()
    for s in range(screens):
        device = f"scr-{s:05d}"
        if store.dialect == "sqlite":
            import sqlite3

            with sqlite3.connect(store.url.removeprefix("sqlite:///")) as conn:
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute(
                    "UPDATE impressions SET verification = 'verified' WHERE device_id = ?",
                    (device,),
                )
        else:
            with psycopg.connect(store.url, autocommit=True) as conn:
                conn.execute(
                    "UPDATE impressions SET verification = 'verified' WHERE device_id = %s",
                    (device,),
                )
    return time.perf_counter() - started


def store_url(kind: str, folder: Path, tag: str) -> tuple[str, str | None]:
    if kind == "sqlite":
        return f"sqlite:///{folder / f'{tag}.db'}", None
    schema = f"pp_bench_verify_{secrets.token_hex(4)}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}".encode())
    return f"{PG_URL}?options=-csearch_path%3D{schema}", schema


def drop(schema: str | None) -> None:
    if schema:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE".encode())


async def decisions_bench(kind: str, folder: Path, screens: int, count: int) -> dict[str, Any]:
    url, schema = store_url(kind, folder, "decide")
    store = open_store(url, folder / f"{kind}-blobs")
    await store.open()
    try:
        total = await seed(store, screens, count, {})
        took = await decide_all(store, START + 10 * 86_400_000)
        reference = await bare_updates(store, screens)
    finally:
        await store.close()
        drop(schema)
    return {"plays": total, "decisions_s": total / took, "reference_s": total / reference}


def shots_bench(rounds: int) -> dict[str, float]:
    data = jpeg(1)
    started = time.perf_counter()
    for _ in range(rounds):
        imaging.fingerprint(data)
    checked = rounds / (time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(rounds):
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    full = rounds / (time.perf_counter() - started)
    return {"jpeg_bytes": len(data), "fingerprints_s": checked, "full_decodes_s": full}


async def realtime_bench(kind: str, folder: Path, screens: int, count: int) -> dict[str, Any]:
    url, schema = store_url(kind, folder, "realtime")
    store = open_store(url, folder / f"{kind}-rt-blobs")
    await store.open()
    try:
        shots: dict[str, list[str]] = {}
        now = START
        for s in range(screens):
            device = f"scr-{s:05d}"
            shots[device] = []
            for i in range(count):
                data = jpeg(s * count + i + 7)
                sha = hashlib.sha256(data).hexdigest()
                store.blobs.put(sha, data)
                await store.add_screenshot(sha, "image/jpeg", len(data), device, now)
                shots[device].append(sha)
        total = await seed(store, screens, count, shots)
        took = await decide_all(store, START + 10 * 86_400_000)
    finally:
        await store.close()
        drop(schema)
    needed = 1000 / (PLAY_MS / 1000)
    return {"plays": total, "decisions_s": total / took, "needed_s": needed}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--screens", type=int, default=500)
    parser.add_argument("--plays", type=int, default=40, help="plays per screen")
    parser.add_argument("--shots", type=int, default=400, help="plays with fresh screenshots")
    args = parser.parse_args()
    kinds = ("sqlite", "postgres") if args.store == "both" else (args.store,)
    print(f"python {sys.version.split()[0]}; {args.screens} screens x {args.plays} plays")
    shots = shots_bench(200)
    print(
        f"screenshots: 1920x1080 JPEG q85 ({shots['jpeg_bytes']} bytes): "
        f"{shots['fingerprints_s']:.0f} checked/s; reference full decode "
        f"{shots['full_decodes_s']:.0f}/s"
    )
    with tempfile.TemporaryDirectory(prefix="pp-bench-verify-") as tmp:
        folder = Path(tmp)
        for kind in kinds:
            d = await decisions_bench(kind, folder, args.screens, args.plays)
            print(
                f"{kind}: {d['plays']} plays decided at {d['decisions_s']:.0f}/s "
                f"(reference: bare UPDATE of the same rows {d['reference_s']:.0f}/s)"
            )
            r = await realtime_bench(kind, folder, args.shots // 4, 4)
            print(
                f"{kind}: {r['plays']} plays with a fresh screenshot each decided at "
                f"{r['decisions_s']:.0f}/s (a 1,000-screen fleet of 10 s plays needs "
                f"{r['needed_s']:.0f}/s)"
            )


if __name__ == "__main__":
    asyncio.run(main())
