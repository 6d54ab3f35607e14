"""Two verifiers racing over one PostgreSQL store decide exactly as one verifier does."""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from playproof.config import Limits
from playproof.server.verifier import Verifier
from playproof.stores import open_store
from playproof.stores.base import DeviceInfo, Store
from tests.stores.conftest import PG_URL, admin_execute, query, require_postgres, with_schema
from tests.stores.pipeline import batch
from tests.stores.test_verification import NOON, catalog_doc, import_catalog, play

SCREENS = 12
PLAYS = 40

pytestmark = pytest.mark.postgres


@pytest.fixture
def two_schemas() -> Iterator[tuple[str, str]]:
    require_postgres()
    names = [f"pp_race_{secrets.token_hex(5)}" for _ in range(2)]
    for name in names:
        admin_execute(f"CREATE SCHEMA {name}")
    try:
        yield with_schema(PG_URL, names[0]), with_schema(PG_URL, names[1])
    finally:
        for name in names:
            admin_execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def fleet_plays(seed: int) -> dict[str, list[Any]]:
    """Per screen, plays that overlap now and then and run past a small daily cap."""
    rng = random.Random(seed)
    plays: dict[str, list[Any]] = {}
    for s in range(SCREENS):
        device, start, records = f"scr-{s}", NOON - 3_600_000, []
        for seq in range(1, PLAYS + 1):
            start += rng.choice((12_000, 15_000, 16_000, 20_000))
            records.append(
                play(seq, start, device_id=device, campaign_id=rng.choice(("cmp-1", "cmp-x")))
            )
        plays[device] = records
    return plays


async def seeded(url: str, plays: dict[str, list[Any]]) -> Store:
    store = open_store(url)
    await store.open()
    doc = catalog_doc(cap={"plays_per_screen_per_day": 15})
    doc["devices"] = [{"device_id": d, "zones": 1} for d in plays]
    await import_catalog(store, doc)
    for device, records in plays.items():
        await store.add_device(DeviceInfo(device, "store-1", NOON, None), f"h-{device}")
        for i in range(0, len(records), 7):  # several commits, as screens deliver
            await store.commit([batch(records[i : i + 7], device, received_at=NOON + 60_000 + i)])
    return store


async def decided(store: Store) -> list[tuple[Any, ...]]:
    return await query(
        store,
        "SELECT device_id, seq, verification, verification_reasons FROM impressions "
        "ORDER BY device_id, seq",
    )


async def test_two_verifiers_racing_decide_exactly_as_one(two_schemas: tuple[str, str]) -> None:
    plays = fleet_plays(7)
    alone, raced = await seeded(two_schemas[0], plays), await seeded(two_schemas[1], plays)
    second = open_store(two_schemas[1])
    await second.open()
    try:
        clock = lambda: NOON + 3_600_000  # noqa: E731
        await Verifier(alone, clock).drain()
        few = Limits(verify_batch=5)  # many small turns, so that the two interleave
        small = Verifier(raced, clock, limits=few)
        other = Verifier(second, clock, limits=few)
        await asyncio.gather(small.drain(), other.drain(), small.drain())
        await Verifier(raced, clock).drain()  # whatever a lost race left pending
        one, two = await decided(alone), await decided(raced)
        assert {row[2] for row in one} == {"verified", "failed"}
        reasons = {r for row in one for r in (row[3] or "").split(",") if r}
        assert {"overlap", "over_cap", "unknown_campaign"} <= reasons, "the race is worth running"
        assert two == one
        logged = await query(
            raced, "SELECT COUNT(*), COUNT(DISTINCT (device_id, seq)) FROM verification_log"
        )
        assert logged == [(SCREENS * PLAYS, SCREENS * PLAYS)], "every play decided once"
    finally:
        for store in (alone, raced, second):
            await store.close()


async def test_a_screen_held_by_another_verifier_leaves_the_rest_of_its_group_to_be_decided(
    two_schemas: tuple[str, str],
) -> None:
    """A turn writes several screens' decisions in one transaction; when another verifier
    holds one of those screens, the others are still written, each alone."""
    url = two_schemas[0]
    store = await seeded(url, fleet_plays(3))
    schema = url.rsplit("%3D", 1)[1]
    held = await psycopg.AsyncConnection.connect(PG_URL)
    try:
        await held.execute("BEGIN")
        lock = "SELECT pg_advisory_xact_lock(hashtext('playproof:verify:' || %s || ':scr-3'))"
        await held.execute(lock.encode(), (schema,))
        clock = lambda: NOON + 3_600_000  # noqa: E731
        await Verifier(store, clock).turn()
        states = {(d, s) for d, _, s, _ in await decided(store)}
        assert ("scr-3", "pending") in states and ("scr-3", "verified") not in states
        assert all(s != "pending" for d, s in states if d != "scr-3"), "the rest were decided"
        await held.execute("ROLLBACK")
        await Verifier(store, clock).drain()
        assert {s for _, _, s, _ in await decided(store)} <= {"verified", "failed"}
    finally:
        await held.close()
        await store.close()
