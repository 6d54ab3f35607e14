"""Fixtures of the store suite: every store, opened fresh; PostgreSQL in a schema of its own.

The PostgreSQL server is the one at `PLAYPROOF_TEST_PG` (default
127.0.0.1:5432, user postgres, database test). Each test gets its own schema,
named in the URL's `options` (libpq passes `-c search_path=...` to the server),
dropped afterwards, so that runs never collide. Where the server cannot be
reached the PostgreSQL tests fail under CI=true and skip elsewhere, saying why.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from playproof.stores import open_store
from playproof.stores.base import Store
from tests.support import IN_CI

PG_URL = os.environ.get("PLAYPROOF_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

_reachable: dict[str, str | None] = {}


def require_postgres(url: str = PG_URL) -> None:
    """Fail (CI) or skip (elsewhere) unless PostgreSQL answers at `url`."""
    if url not in _reachable:
        try:
            with psycopg.connect(url, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
            _reachable[url] = None
        except psycopg.Error as exc:
            _reachable[url] = f"PostgreSQL is not reachable at {url}: {exc}".strip()
    reason = _reachable[url]
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the PostgreSQL tests must run, not skip)")
    pytest.skip(reason)


def with_schema(url: str, schema: str) -> str:
    """`url` with the schema as the connection's search_path."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


def admin_execute(sql: str, url: str = PG_URL) -> None:
    """Run one statement on the test server outside any test schema."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.encode())


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL on the test server whose search_path is a fresh schema, dropped afterwards."""
    require_postgres()
    schema = f"pp_test_{secrets.token_hex(6)}"
    admin_execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_schema(PG_URL, schema)
    finally:
        admin_execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def store_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh database URL of the given kind."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'playproof.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture(params=STORES)
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database URL, once per kind of store."""
    return store_url(request.param, tmp_path, request)


@pytest.fixture
async def store(any_url: str, tmp_path: Path) -> AsyncIterator[Store]:
    """An opened store, once per kind, with its blobs in the test's folder."""
    opened = open_store(any_url, tmp_path / "blobs")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def query(store: Store, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of a read-only query written with `?` placeholders, on either store."""
    if store.url.startswith("postgres"):
        sql = sql.replace("?", "%s")
    rows: list[tuple[Any, ...]] = await store.execute_read(sql, params)  # type: ignore[attr-defined]
    return [tuple(row) for row in rows]
