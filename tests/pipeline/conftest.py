"""Fixtures of the pipeline suite: the shared NATS server, each test in streams of its own.

The NATS server is the one at `PLAYPROOF_TEST_NATS` (default 127.0.0.1:4222,
with JetStream). Every test names its streams and consumers with a random
prefix, deleted afterwards, so that runs never collide. Where the server
cannot be reached the tests fail under CI=true and skip elsewhere, saying why.
PostgreSQL comes from the store suite's fixtures (a schema per test).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator

import nats
import pytest

from playproof.pipeline.jetstream import JetStream
from playproof.pipeline.loader import Loader
from playproof.pipeline.settings import Settings, parse
from playproof.pipeline.sink import JetStreamSink
from playproof.stores.postgres import PostgresStore
from tests.stores.conftest import pg_url  # noqa: F401  (a fixture, used by name)
from tests.support import IN_CI

NATS_URL = os.environ.get("PLAYPROOF_TEST_NATS", "nats://127.0.0.1:4222")
NATS_HOST = NATS_URL.removeprefix("nats://")

_reachable: dict[str, str | None] = {}


async def _probe(url: str) -> None:
    nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0)
    try:
        await nc.jetstream().account_info()
    finally:
        await nc.close()


def require_nats(url: str = NATS_URL) -> None:
    """Fail (CI) or skip (elsewhere) unless a JetStream server answers at `url`."""
    if url not in _reachable:
        try:
            asyncio.run(_probe(url))
            _reachable[url] = None
        except Exception as exc:
            _reachable[url] = f"NATS JetStream is not reachable at {url}: {exc!r}"
    reason = _reachable[url]
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the pipeline tests must run, not skip)")
    pytest.skip(reason)


def pipeline_url(host: str = NATS_HOST, **settings: object) -> str:
    """A jetstream:// URL with a fresh name (streams of its own) and the given settings."""
    given = {"name": f"pp{secrets.token_hex(5)}", "partitions": 2, "ack_wait": "3s"}
    given.update(settings)
    query = "&".join(f"{k}={v}" for k, v in given.items())
    return f"jetstream://{host}?{query}"


async def delete_streams(settings: Settings) -> None:
    """Remove a test's streams (and with them its consumers)."""
    js = await JetStream.connect(settings, "cleanup")
    try:
        await js.delete_streams()
    finally:
        await js.close()


@pytest.fixture
def js_url() -> Iterator[str]:
    """A pipeline URL on the shared NATS server; its streams are deleted afterwards."""
    require_nats()
    url = pipeline_url()
    try:
        yield url
    finally:
        asyncio.run(delete_streams(parse(url)))


@pytest.fixture
async def sink(js_url: str) -> AsyncIterator[JetStreamSink]:
    """An opened ingest-side sink."""
    opened = JetStreamSink(parse(js_url))
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def pg_store(pg_url: str) -> AsyncIterator[PostgresStore]:  # noqa: F811
    """An opened PostgreSQL store in a fresh schema."""
    store = PostgresStore(pg_url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def loader(js_url: str, pg_store: PostgresStore) -> AsyncIterator[Loader]:
    """An in-process loader of every partition into `pg_store`, running in the background."""
    running = Loader(parse(js_url), pg_store)
    ready = asyncio.Event()
    task = asyncio.create_task(running.run(ready=ready.set))
    await asyncio.wait_for(ready.wait(), 30)
    try:
        yield running
    finally:
        running.stop()
        await asyncio.wait_for(task, 30)
