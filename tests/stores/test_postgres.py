"""What only PostgreSQL has: several nodes at once, migrations, day partitions, its errors."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from playproof.errors import ConfigError, SchemaMismatch, StoreUnavailable
from playproof.stores import migrations
from playproof.stores.postgres import PostgresStore
from playproof.stores.postgres_partitions import DAY_MS, day_of, partition_name
from tests.stores.conftest import PG_URL, require_postgres, with_schema
from tests.stores.pipeline import batch, commit_one
from tests.support import (
    ServerProcess,
    client,
    envelope,
    free_port,
    make_record,
    now_ms,
    provision,
)

pytestmark = pytest.mark.postgres


async def opened(url: str, tmp_path: Path) -> PostgresStore:
    store = PostgresStore(url, tmp_path / "blobs")
    await store.open()
    return store


def rows(url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql.encode(), params).fetchall()


# --- several nodes at once ------------------------------------------------------


async def test_two_nodes_given_the_same_records_at_once_accept_each_exactly_once(
    pg_url: str, tmp_path: Path
) -> None:
    """Each node commits the same journals' batches, in opposite orders, at the same time."""
    nodes = [await opened(pg_url, tmp_path) for _ in range(2)]
    try:
        for round_ in range(15):
            seqs = range(round_ * 20 + 1, round_ * 20 + 21)
            writes = [
                batch([make_record(journal_id=j, seq=s) for s in seqs]) for j in ("j-a", "j-b")
            ]
            results = await asyncio.gather(
                nodes[0].commit(writes), nodes[1].commit(list(reversed(writes)))
            )
            first, second = results[0], list(reversed(results[1]))
            for one, other in zip(first, second, strict=True):
                for a, b in zip(one, other, strict=True):
                    assert sorted((a.result, b.result)) == ["accepted", "duplicate"]
    finally:
        for node in nodes:
            await node.close()
    counted = rows(
        pg_url, "SELECT journal_id, count(*), count(DISTINCT seq) FROM impressions GROUP BY 1"
    )
    assert sorted(counted) == [("j-a", 300, 300), ("j-b", 300, 300)]


async def test_concurrent_commits_on_one_journal_lose_no_sequence_update(
    pg_url: str, tmp_path: Path
) -> None:
    """Two nodes, three lanes each, interleaved sequences: the state ends whole."""
    seqs = list(range(1, 241))
    random.Random(7).shuffle(seqs)
    chunks = [seqs[i : i + 8] for i in range(0, len(seqs), 8)]
    nodes = [await opened(pg_url, tmp_path) for _ in range(2)]

    async def lane(node: PostgresStore, mine: list[list[int]]) -> None:
        for chunk in mine:
            acks = await commit_one(node, batch([make_record(seq=s) for s in chunk]))
            assert {a[1] for a in acks} == {"accepted"}

    try:
        await asyncio.gather(
            *(lane(nodes[i % 2], chunks[i::6]) for i in range(6)),
        )
        [journal] = await nodes[0].journals()
    finally:
        for node in nodes:
            await node.close()
    assert (journal.high_water, journal.gaps) == (240, ())
    assert rows(pg_url, "SELECT count(*) FROM gaps") == [(0,)]
    assert rows(pg_url, "SELECT count(*) FROM impression_keys") == [(240,)]


async def test_fills_from_one_node_close_the_gaps_another_opened(
    pg_url: str, tmp_path: Path
) -> None:
    """Late fills from one node close the gaps another node opened."""
    a, b = await opened(pg_url, tmp_path), await opened(pg_url, tmp_path)
    try:
        await commit_one(a, batch([make_record(seq=s) for s in (1, 10)]))
        await asyncio.gather(
            commit_one(b, batch([make_record(seq=s) for s in (2, 3, 4)])),
            commit_one(a, batch([make_record(seq=s) for s in (6, 7)])),
        )
        [journal] = await b.journals()
    finally:
        await a.close()
        await b.close()
    assert [g[:2] for g in journal.gaps] == [(5, 5), (8, 9)]


# --- migrations -------------------------------------------------------------------


async def test_a_fresh_schema_is_migrated_once_and_reports_its_version(
    pg_url: str, tmp_path: Path
) -> None:
    store = await opened(pg_url, tmp_path)
    await store.close()
    store = await opened(pg_url, tmp_path)
    try:
        assert await store.schema_version() == migrations.latest("postgres")
    finally:
        await store.close()
    applied = rows(pg_url, "SELECT version, name FROM schema_version ORDER BY version")
    assert applied == [(m.version, m.name) for m in migrations.migrations("postgres")]
    schema = rows(pg_url, "SELECT current_schema()")[0][0]
    tables = rows(
        PG_URL,
        "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename = %s",
        schema,
        "impression_keys",
    )
    assert tables == [(1,)]


async def test_a_schema_newer_than_the_code_is_refused_clearly(pg_url: str, tmp_path: Path) -> None:
    await (await opened(pg_url, tmp_path)).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version (version, name) VALUES (99, 'future')")
    with pytest.raises(SchemaMismatch, match="version 99, newer than this playproof"):
        await opened(pg_url, tmp_path)


def test_serve_and_db_upgrade_migrate_and_refuse_a_newer_schema(
    pg_url: str, tmp_path: Path
) -> None:
    cli = [sys.executable, "-m", "playproof"]
    upgrade = subprocess.run(
        [*cli, "db", "upgrade", "--db", pg_url], capture_output=True, timeout=60
    )
    assert upgrade.returncode == 0, upgrade.stderr
    assert b"up to date" in upgrade.stderr
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version (version, name) VALUES (99, 'future')")
    serve = subprocess.run(
        [*cli, "serve", "--db", pg_url, "--port", "0"],
        capture_output=True,
        timeout=60,
        env={**os.environ, "PLAYPROOF_BLOB_DIR": str(tmp_path / "blobs")},
    )
    assert serve.returncode == 1
    message = serve.stderr.decode()
    assert "version 99, newer than this playproof" in message
    assert "Traceback" not in message


def test_serve_alone_migrates_a_fresh_schema_and_ingests(pg_url: str, tmp_path: Path) -> None:
    """`playproof serve --db postgresql://...` is all it takes."""
    env = {"PLAYPROOF_BLOB_DIR": str(tmp_path / "blobs")}
    with ServerProcess(pg_url, env=env) as server:
        token = provision(pg_url, "scr-serve")
        records = [make_record(device_id="scr-serve", seq=s) for s in (1, 2)]
        with client(server.url, token) as http:
            assert http.get("/healthz").json() == {"status": "ok", "store": "postgresql"}
            body = envelope(records, "scr-serve")
            first = http.post("/v1/impressions/batch", json=body).json()["acks"]
            again = http.post("/v1/impressions/batch", json=body).json()["acks"]
    assert [a["result"] for a in first + again] == ["accepted"] * 2 + ["duplicate"] * 2
    assert rows(pg_url, "SELECT max(version) FROM schema_version") == [
        (migrations.latest("postgres"),)
    ]
    assert rows(pg_url, "SELECT count(*) FROM impressions") == [(2,)]


async def test_a_search_path_naming_no_schema_is_refused_clearly(tmp_path: Path) -> None:
    require_postgres()
    url = with_schema(PG_URL, "pp_test_no_such_schema")
    with pytest.raises(SchemaMismatch, match="create the schema first"):
        await opened(url, tmp_path)


# --- partitions ---------------------------------------------------------------------


async def test_day_partitions_are_ready_ahead_and_made_on_demand(
    pg_url: str, tmp_path: Path
) -> None:
    store = await opened(pg_url, tmp_path)
    now = now_ms()
    today = day_of(now)
    try:
        made = set(
            rows(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        )
        assert {(partition_name(d),) for d in range(today - 1, today + 4)} <= made
        # A long play that started two days ago is accepted (with a flag): its day
        # gets a partition on demand; one that claims to be from 2000 (the earliest time
        # the rules accept) lands in the default.
        long_play = make_record(seq=1, start_ts=now - 2 * DAY_MS)
        ancient = make_record(seq=2, start_ts=946_684_800_000)
        acks = await commit_one(store, batch([long_play, ancient, make_record(seq=3)]))
        assert [a[1] for a in acks] == ["accepted"] * 3
    finally:
        await store.close()
    placed = rows(pg_url, "SELECT seq, tableoid::regclass::text FROM impressions ORDER BY seq")
    assert placed == [
        (1, partition_name(today - 2)),
        (2, "impressions_default"),
        (3, partition_name(today)),
    ]


async def test_partition_bounds_are_utc_days_of_epoch_milliseconds(
    pg_url: str, tmp_path: Path
) -> None:
    await (await opened(pg_url, tmp_path)).close()
    today = day_of(now_ms())
    [(bound,)] = rows(
        pg_url,
        "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_class c "
        "WHERE c.relname = %s AND c.relnamespace = current_schema()::regnamespace",
        partition_name(today),
    )
    assert bound == f"FOR VALUES FROM ('{today * DAY_MS}') TO ('{(today + 1) * DAY_MS}')"
    assert partition_name(0) == "impressions_p19700101"


# --- errors --------------------------------------------------------------------------


async def test_an_unreachable_database_is_unavailable_at_once(tmp_path: Path) -> None:
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{free_port()}/test", tmp_path)
    with pytest.raises(StoreUnavailable, match="cannot connect to postgresql://postgres@127"):
        await store.open()
    with pytest.raises(StoreUnavailable, match="not open"):
        await store.ping()


def test_a_url_libpq_refuses_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="libpq"):
        PostgresStore("postgresql://host:notaport:/x?bogus=1", tmp_path)


async def test_a_stale_record_is_rejected_without_touching_partitions(
    pg_url: str, tmp_path: Path
) -> None:
    store = await opened(pg_url, tmp_path)
    try:
        old = make_record(seq=1, end_ts=now_ms() - 10 * DAY_MS, start_ts=now_ms() - 10 * DAY_MS - 1)
        assert await commit_one(store, batch([old])) == [(1, "rejected", "stale")]
    finally:
        await store.close()
    names = rows(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    assert (partition_name(day_of(now_ms()) - 10),) not in names
