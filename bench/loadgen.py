"""Load generator for the ingest service: unique, sealed records over HTTP and the stream.

Everything a scenario sends is generated, sealed and encoded before its clock
starts; while it runs the generator only patches `sent_at` (and the frame id)
into pre-built bytes, so that what is measured is the service, not the
generator. Each scenario first runs one short warm-up round, whose rate sizes
the pool of records for the measured run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import resource
import sqlite3
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Protocol

import httpx
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from playproof.protocol import Record, encode, seal

BATCH_PATH = "/v1/impressions/batch"
STREAM_PATH = "/v1/stream"
POOL_MARGIN = 2.0  # pre-generate this much more than the warm-up rate predicts
WARM_RECORDS = 20_000  # the most a stream warm-up round sends
MAX_POOL_RECORDS = 3_000_000  # about 1.4 GB of encoded records
DRAIN_SECONDS = 180.0  # how long to wait for acks once sending has stopped
OPEN_CONCURRENCY = 100


def now_ms() -> int:
    """The wall clock in epoch milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass
class Device:
    """A provisioned device, its token, and the next sequence number it will use."""

    device_id: str
    token: str
    store_id: str = "store-1"
    next_seq: int = 1
    screenshots: bool = True  # whether its records name a proof screenshot
    last_end: int | None = None  # end_ts of its latest record: its plays go forward in time

    @property
    def journal_id(self) -> str:
        """The device's one journal for the whole run."""
        return f"j-{self.device_id}"

    @property
    def auth(self) -> dict[str, str]:
        """The Authorization header."""
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(frozen=True)
class Chunk:
    """A device's records as an envelope without its `{`, frame id and `sent_at` value."""

    first_seq: int
    count: int
    body: bytes


PLAYLIST = 20
CATALOGUE = 500
SPACING_MS = 12_000
# A device's first records are a drained backlog: plays 12 s apart over 3.3 hours.
BACKLOG_MS = 1000 * SPACING_MS


def make_record(device: Device, seq: int, end: int) -> bytes:
    """One sealed record of a screen looping a 20-item playlist; one in ten skipped.

    A device's playlist is 20 contents of a 500-content catalogue (campaigns, ad
    groups and suppliers follow the content), so that the report rollups see
    realistic groups.
    """
    skipped = seq % 10 == 0
    shot = hashlib.sha256(f"{device.device_id}/{seq}".encode()).hexdigest()
    duration = 6_000 if skipped else 15_000
    offset = zlib.crc32(device.device_id.encode()) % CATALOGUE
    content = (offset + seq % PLAYLIST) % CATALOGUE
    record = Record(
        v=1,
        device_id=device.device_id,
        journal_id=device.journal_id,
        seq=seq,
        campaign_id=f"cmp-{content % 50}",
        ad_group_id=f"ag-{content % 200}",
        content_id=f"cnt-{content}",
        store_id=device.store_id,
        supplier_id=f"sup-{content % 20}",
        start_ts=end - duration,
        end_ts=end,
        duration_ms=duration,
        expected_ms=15_000,
        end_reason="skipped" if skipped else "completed",
        clock_offset_ms=-12,
        clock_synced=True,
        screenshot_sha256=shot if device.screenshots else None,
        screenshot_at_ms=duration // 2 if device.screenshots else None,
    )
    return encode(seal(record))


def play_ends(device: Device, count: int) -> list[int]:
    """End times of the device's next `count` plays, forward in time as a screen's are.

    The first records spread over the last 3.3 hours (a drained backlog); later
    ones share the time since the device's previous records, up to a second ago.
    """
    now = now_ms() - 1_000
    since = now - BACKLOG_MS if device.last_end is None else device.last_end
    step = max(0, now - since) / count
    ends = [since + round(step * (i + 1)) for i in range(count)]
    device.last_end = ends[-1]
    return ends


def take(device: Device, count: int) -> Chunk:
    """The device's next `count` records, pre-encoded as an envelope body."""
    first = device.next_seq
    ends = play_ends(device, count)
    records = b",".join(make_record(device, first + i, end) for i, end in enumerate(ends))
    device.next_seq += count
    head = b'"device_id":' + encode(device.device_id) + b',"impressions":['
    return Chunk(first, count, head + records + b'],"sent_at":')


def give_back(device: Device, unused: Sequence[Chunk]) -> None:
    """Return unsent chunks' sequence numbers, so the device's sequence stays gapless."""
    if unused:
        device.next_seq = unused[0].first_seq


def http_body(chunk: Chunk) -> bytes:
    """The batch body, sent now."""
    return b"{" + chunk.body + b"%d}" % now_ms()


def stream_frame(chunk: Chunk, frame_id: int) -> bytes:
    """The stream frame with its id, sent now."""
    return b'{"id":%d,' % frame_id + chunk.body + b"%d}" % now_ms()


class _Ack(msgspec.Struct):
    result: str
    reason: str | None = None


class _Answer(msgspec.Struct):
    id: int | None = None
    acks: list[_Ack] = []
    error: str | None = None


_answer = msgspec.json.Decoder(_Answer)


@dataclass
class Tally:
    """What one round's acks said, and how long each request or frame took."""

    accepted: int = 0
    latencies: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=perf_counter)
    last_ack: float = 0.0

    def count(self, acks: list[_Ack], expected: int) -> None:
        """Count one answer's acks; anything but `accepted` is an error."""
        self.last_ack = perf_counter()
        if len(acks) != expected:
            self.errors[f"expected {expected} acks, got {len(acks)}"] += 1
        for ack in acks:
            if ack.result == "accepted":
                self.accepted += 1
            else:
                self.errors[f"{ack.result} {ack.reason or ''}".strip()] += 1

    @property
    def seconds(self) -> float:
        """From the start of the round to its last ack."""
        return max(self.last_ack - self.started, 1e-9)


@dataclass
class Result:
    """A measured scenario: the measured round and everything stored on the way."""

    scenario: str
    params: str
    tally: Tally
    stored: int
    warm_errors: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        """Accepted records per second."""
        return self.tally.accepted / self.tally.seconds

    def latency_ms(self, q: float) -> float:
        """A latency quantile (0 < q ≤ 1) in milliseconds."""
        return percentile(self.tally.latencies, q) * 1000

    @property
    def errors(self) -> Counter[str]:
        """Errors of the warm-up and measured rounds together."""
        return self.warm_errors + self.tally.errors


class Probe(Protocol):
    """Told when a measured round starts and ends (to sample the server, for one)."""

    def begin(self) -> None:
        """The measured round starts."""

    def end(self) -> None:
        """The measured round has ended."""


class NoProbe:
    """A probe that does nothing."""

    def begin(self) -> None:
        """Nothing."""

    def end(self) -> None:
        """Nothing."""


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank quantile of `values`; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def pool_chunks(rate: float, duration: float, senders: int, per_chunk: int, least: int) -> int:
    """Chunks per sender to pre-generate so that `duration` at `rate` will not run dry."""
    records = min(rate * duration * POOL_MARGIN, MAX_POOL_RECORDS)
    return max(least, math.ceil(records / senders / per_chunk))


def warm_frames(conns: int, frame_records: int, window: int) -> int:
    """Frames per connection in a warm-up round: enough to fill the window, if affordable."""
    return min(2 * window, max(1, WARM_RECORDS // (conns * frame_records)))


# --- HTTP batches -------------------------------------------------------------


async def _post_all(
    client: httpx.AsyncClient, chunks: list[Chunk], deadline: float, tally: Tally
) -> list[Chunk]:
    for i, chunk in enumerate(chunks):
        if perf_counter() >= deadline:
            return chunks[i:]
        body = http_body(chunk)
        sent = perf_counter()
        try:
            response = await client.post(BATCH_PATH, content=body)
        except httpx.HTTPError as exc:
            tally.errors[f"{type(exc).__name__}: {exc}"] += chunk.count
            continue
        tally.latencies.append(perf_counter() - sent)
        if response.status_code != 200:
            tally.errors[f"HTTP {response.status_code}: {response.text[:160]}"] += chunk.count
            continue
        tally.count(_answer.decode(response.content).acks, chunk.count)
    return []


async def _http_round(
    clients: list[httpx.AsyncClient],
    devices: list[Device],
    pools: list[list[Chunk]],
    deadline: float,
) -> Tally:
    tally = Tally()
    unused = await asyncio.gather(
        *(_post_all(c, p, deadline, tally) for c, p in zip(clients, pools, strict=True))
    )
    for device, rest in zip(devices, unused, strict=True):
        give_back(device, rest)
    return tally


def _http_client(url: str, device: Device) -> httpx.AsyncClient:
    headers = {**device.auth, "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits)


async def run_http(
    url: str, devices: list[Device], batch: int, duration: float, probe: Probe | None = None
) -> Result:
    """C clients (one per device), each posting `batch`-record batches back to back."""
    probe = probe or NoProbe()
    clients = [_http_client(url, d) for d in devices]
    try:
        warm = await _http_round(clients, devices, [[take(d, batch)] for d in devices], math.inf)
        per_client = pool_chunks(warm.accepted / warm.seconds, duration, len(devices), batch, 2)
        pools = [[take(d, batch) for _ in range(per_client)] for d in devices]
        probe.begin()
        tally = await _http_round(clients, devices, pools, perf_counter() + duration)
        probe.end()
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    params = f"{batch} rec × {len(devices)} clients"
    return Result("http", params, tally, warm.accepted + tally.accepted, warm.errors)


# --- the stream ----------------------------------------------------------------


class StreamConn:
    """One device's WebSocket: frames go out with ids, acks come back matched by id."""

    def __init__(self, ws: ClientConnection, window: int) -> None:
        self.ws = ws
        self.tally = Tally()
        self.closed = False
        self._slots = asyncio.Semaphore(window)
        self._pending: dict[int, tuple[float, int]] = {}
        self._next_id = 1
        self._settled = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, device: Device, window: int = 8) -> StreamConn:
        """Connect to the stream as `device`."""
        ws = await connect(
            url.replace("http", "ws", 1) + STREAM_PATH,
            additional_headers=device.auth,
            compression=None,
            proxy=None,
            max_size=None,
            ping_interval=None,
            open_timeout=60,
        )
        return cls(ws, window)

    async def room(self, deadline: float) -> bool:
        """Wait for room in the window; False once `deadline` has passed or the peer is gone."""
        await self._slots.acquire()
        if self.closed or perf_counter() >= deadline:
            self._slots.release()
            return False
        return True

    async def send(self, chunk: Chunk) -> None:
        """Send a chunk as the next frame (a frame lost to a closed connection is never acked)."""
        frame_id, self._next_id = self._next_id, self._next_id + 1
        data = stream_frame(chunk, frame_id)
        self._pending[frame_id] = (perf_counter(), chunk.count)
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(data, text=True)

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                self._answer(_answer.decode(message))
        except ConnectionClosed as exc:
            self.tally.errors[f"connection closed: {exc}"] += 1
        finally:
            # Wake the one sender that may be waiting for room, and a drain.
            self.closed = True
            self._slots.release()
            self._settled.set()

    def _answer(self, answer: _Answer) -> None:
        sent = self._pending.pop(answer.id or 0, None)
        if sent is None:
            self.tally.errors[f"answer for unknown frame id {answer.id}: {answer.error}"] += 1
            return
        self.tally.latencies.append(perf_counter() - sent[0])
        if answer.error is not None:
            self.tally.errors[f"error: {answer.error[:160]}"] += sent[1]
        else:
            self.tally.count(answer.acks, sent[1])
        self._slots.release()
        if not self._pending:
            self._settled.set()

    async def drain(self) -> None:
        """Wait for every frame in flight to be answered; count the rest as lost."""
        if not self.closed:
            self._settled.clear()
        if self._pending and not self.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), DRAIN_SECONDS)
        lost = sum(count for _, count in self._pending.values())
        if lost:
            why = "connection closed" if self.closed else f"none within {DRAIN_SECONDS:.0f} s"
            self.tally.errors[f"no ack ({why})"] += lost
            self._pending.clear()

    async def close(self) -> None:
        """Close the connection and stop reading."""
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def raise_fd_limit(wanted: int) -> None:
    """Lift the soft open-files limit to `wanted` (bounded by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def open_all(url: str, devices: list[Device], window: int = 8) -> list[StreamConn]:
    """One stream connection per device, opened a hundred at a time."""
    raise_fd_limit(len(devices) + 1024)
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def one(device: Device) -> StreamConn:
        async with gate:
            return await StreamConn.open(url, device, window)

    return list(await asyncio.gather(*(one(d) for d in devices)))


async def close_all(conns: list[StreamConn]) -> None:
    """Close every connection."""
    await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)


def _merge(conns: list[StreamConn], started: float) -> Tally:
    tally = Tally(started=started)
    for conn in conns:
        part = conn.tally
        tally.accepted += part.accepted
        tally.latencies += part.latencies
        tally.lags += part.lags
        tally.errors += part.errors
        tally.last_ack = max(tally.last_ack, part.last_ack)
    return tally


async def _pump(conn: StreamConn, chunks: list[Chunk], deadline: float) -> list[Chunk]:
    for i, chunk in enumerate(chunks):
        if not await conn.room(deadline):
            return chunks[i:]
        await conn.send(chunk)
    return []


async def _stream_round(
    conns: list[StreamConn], devices: list[Device], pools: list[list[Chunk]], deadline: float
) -> Tally:
    for conn in conns:
        conn.tally = Tally()
    started = perf_counter()
    unused = await asyncio.gather(
        *(_pump(c, p, deadline) for c, p in zip(conns, pools, strict=True))
    )
    await asyncio.gather(*(c.drain() for c in conns))
    for device, rest in zip(devices, unused, strict=True):
        give_back(device, rest)
    return _merge(conns, started)


async def run_stream(
    url: str,
    devices: list[Device],
    frame_records: int,
    duration: float,
    window: int = 8,
    probe: Probe | None = None,
) -> Result:
    """N connections (one per device), each keeping `window` frames in flight."""
    probe = probe or NoProbe()
    conns = await open_all(url, devices, window)
    try:
        per_conn = warm_frames(len(devices), frame_records, window)
        warm_pools = [[take(d, frame_records) for _ in range(per_conn)] for d in devices]
        warm = await _stream_round(conns, devices, warm_pools, math.inf)
        rate = warm.accepted / warm.seconds
        per_conn = pool_chunks(rate, duration, len(devices), frame_records, 2 * window)
        pools = [[take(d, frame_records) for _ in range(per_conn)] for d in devices]
        probe.begin()
        tally = await _stream_round(conns, devices, pools, perf_counter() + duration)
        probe.end()
    finally:
        await close_all(conns)
    params = f"{frame_records} rec/frame × {len(devices)} conns, w{window}"
    return Result("stream", params, tally, warm.accepted + tally.accepted, warm.errors)


# --- the stream, paced -----------------------------------------------------------


async def _paced_sender(conn: StreamConn, chunks: list[Chunk], first: float) -> None:
    for k, chunk in enumerate(chunks):
        target = first + k
        delay = target - perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        conn.tally.lags.append(perf_counter() - target)
        await conn.send(chunk)


async def _paced_round(conns: list[StreamConn], devices: list[Device], seconds: int) -> Tally:
    pools = [[take(d, 1) for _ in range(seconds)] for d in devices]
    for conn in conns:
        conn.tally = Tally()
    start = perf_counter() + 0.2
    firsts = [start + i / len(conns) for i in range(len(conns))]
    await asyncio.gather(*map(_paced_sender, conns, pools, firsts))
    await asyncio.gather(*(c.drain() for c in conns))
    return _merge(conns, start)


async def run_paced(
    url: str, devices: list[Device], seconds: int, probe: Probe | None = None
) -> Result:
    """One connection per device, each sending a 1-record frame a second, evenly spread."""
    probe = probe or NoProbe()
    conns = await open_all(url, devices, window=1_000_000)
    try:
        warm = await _paced_round(conns, devices, 1)
        probe.begin()
        tally = await _paced_round(conns, devices, seconds)
        probe.end()
    finally:
        await close_all(conns)
    params = f"{len(devices)} conns × 1 rec/s, {seconds} s"
    return Result("paced", params, tally, warm.accepted + tally.accepted, warm.errors)


def count_rows(db_url: str) -> int:
    """Rows in the impressions table of a sqlite:/// or postgresql:// database."""
    if db_url.startswith(("postgresql://", "postgres://")):
        import psycopg

        with psycopg.connect(db_url) as conn:
            row = conn.execute("SELECT count(*) FROM impressions").fetchone()
            return int(row[0]) if row else 0
    path = db_url.removeprefix("sqlite:///")
    if not Path(path).exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM impressions").fetchone()[0])
        except sqlite3.OperationalError:
            return 0
