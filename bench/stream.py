"""Stream benchmark (issue 17): 1-record frames at saturation against an echo reference, and
paced fleets of many connections, with the disk's fsync latency beside them.

    .venv/bin/python bench/stream.py                       # saturation, then both paced runs
    .venv/bin/python bench/stream.py --mode saturation --duration 10
    .venv/bin/python bench/stream.py --mode paced --connections 10000 --period 10 --seconds 30
    .venv/bin/python bench/stream.py --mode saturation --ws websockets   # another uvicorn ws

`saturation`: 100 connections, 8 frames in flight each, 1-record frames, against
`playproof serve` and, in the same run, against an *echo reference*: a minimal Starlette
WebSocket endpoint served by uvicorn with the service's own settings
(`runner.uvicorn_settings`) in a process of its own, answering every frame with a fixed
ack of the same shape. Reported: frames/s of both, their ratio, and each server's CPU
per frame (utime + stime of the whole process from /proc, threads included).

`paced`: N connections each sending one 1-record frame every `--period` seconds, evenly
spread; ack latency p50/p99/max, the service's CPU (% of one core) and peak RSS, and the
p50/p99 of `fdatasync` of a 4 KiB append on the database's own disk, measured in the same
run by a thread of the generator (20 a second: a WAL commit's floor).

The *floor* of each (after saturation; after a paced run given `--paced-echo`; skipped
with `--no-floor`): bench/batches.py's store phase, pinned to the service's core, commits
1-record batches from as many devices, as many a commit as the service grouped, straight
through the store (drafting included, no HTTP, decoding or rules); what the echo spends a
frame plus what the store spends a frame is what any service over this store and this
framework spends at least. On SQLite, below it, the same rows written by the store's own
statements alone (batches.py's raw phase): the floor with none of playproof's Python.
Decoding and judging (timed off the clock) are printed beside it, not counted.

By default the servers are pinned to core 1 and the generator to core 0 (`taskset`,
`sched_setaffinity`): the service then gets one core of its own and CPU figures are not
taken from the generator. `--no-pin` leaves both to the scheduler.

The generator is one asyncio (uvloop) process speaking WebSocket over raw asyncio
protocols: no task per connection or frame, frames pre-sealed before the clock starts,
and a zero masking key (RFC 6455 wants an unpredictable one from a browser, to protect
proxies; a server unmasks any key alike), so that 10,000 connections cost it little.
Every run checks that the database gained exactly the records acknowledged `accepted`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import re
import resource
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import cast

import httpx
import uvloop

import floor
import ingest
from ingest import UNLIMITED, cpu_seconds
from loadgen import Chunk, Device, _answer, count_rows, stream_frame, take

BENCH = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_CORE = 1
GENERATOR_CORE = 0
OPEN_AT_ONCE = 200
ECHO_ACK = (
    b'{"id":0,"received_at":1733390000000,"skew_ms":0,'
    b'"acks":[{"seq":1,"result":"accepted","status":"valid","quality":100}]}'
)


# --- the servers, each in its own process ------------------------------------------


def serve_echo(ws_impl: str) -> None:
    """The echo reference: the service's uvicorn settings, a minimal WebSocket endpoint."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    from playproof.server import runner

    runner.WS_IMPL = ws_impl
    ack = ECHO_ACK.decode()

    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await ws.receive_text()
                await ws.send_text(ack)

    app = Starlette(routes=[WebSocketRoute("/v1/stream", echo)])
    settings = {**runner.uvicorn_settings("warning"), "lifespan": "off"}
    server = uvicorn.Server(uvicorn.Config(app, **settings))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))

    async def main() -> None:
        task = asyncio.create_task(server.serve([sock]))
        while not server.started:  # noqa: ASYNC110 (uvicorn sets a flag, no event)
            await asyncio.sleep(0.02)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        print(f"echo serving on {url}", file=sys.stderr, flush=True)
        await task

    uvloop.run(main())


def serve_playproof(ws_impl: str, argv: list[str]) -> None:
    """`playproof serve` with another uvicorn WebSocket implementation, if asked."""
    from playproof import cli
    from playproof.server import runner

    runner.WS_IMPL = ws_impl
    if os.environ.get("BENCH_GC_LOG"):
        log_gc_pauses()
    sys.argv = ["playproof", "serve", *argv]
    cli.main()


def log_gc_pauses() -> None:
    """Print every garbage collection over 5 ms to stderr (generation, ms, collected)."""
    import gc

    started = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = perf_counter()
            return
        pause = perf_counter() - started[0]
        if pause > 0.005:
            print(
                f"gc pause: generation {info['generation']}, {pause * 1000:.1f} ms, "
                f"{info['collected']} collected",
                file=sys.stderr,
                flush=True,
            )

    gc.callbacks.append(timed)


class Server(ingest.Server):
    """A server in its own process announcing its URL on stderr; pinned to SERVER_CORE
    when `pin`, with a longer log kept (its GC pauses and metrics address)."""

    def __init__(self, name: str, cmd: list[str], pin: bool, env: dict[str, str]) -> None:
        pinned = (["taskset", "-c", str(SERVER_CORE)] if pin else []) + cmd
        super().__init__(name, pinned, "serving on", env)
        self.log = deque(maxlen=400)

    @property
    def pid(self) -> int:
        """Its process id."""
        assert self.proc is not None
        return self.proc.pid

    def metrics(self) -> dict[str, float]:
        """The commit counters of `/metrics` on the `--metrics-listen` address, if any."""
        found = [re.search(r"metrics on (http://\S+)", line) for line in self.log]
        urls = [m.group(1) for m in found if m]
        if not urls:
            return {}
        text = httpx.get(urls[0] + "/metrics", timeout=10).text
        wanted = ("playproof_commit_batches_sum", "playproof_commit_batches_count")
        return {
            name: float(value)
            for name, value in re.findall(r"^(\w+) ([0-9.e+]+)$", text, re.MULTILINE)
            if name in wanted
        }


def playproof_server(args: argparse.Namespace, db_url: str, pin: bool) -> Server:
    """The service on a fresh port (imported from `--pythonpath` first, if given)."""
    argv = ["--db", db_url, "--port", "0", "--log-level", "warning", *args.serve_arg]
    # A private metrics listener: the bench reads the commit sizes from it.
    argv += ["--metrics-listen", "127.0.0.1:0"]
    cmd = [sys.executable, str(Path(__file__)), "--serve", "playproof", "--ws", args.ws, "--"]
    env = dict(UNLIMITED)
    if args.gc_log:
        env["BENCH_GC_LOG"] = "1"
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    return Server("playproof", cmd + argv, pin, env)


def echo_server(ws_impl: str, pin: bool) -> Server:
    """The echo reference on a fresh port."""
    cmd = [sys.executable, str(Path(__file__)), "--serve", "echo", "--ws", ws_impl]
    return Server("echo", cmd, pin, {})


# --- sampling a process ----------------------------------------------------------------


def loop_cpu_seconds(pid: int) -> float:
    """CPU time of a process's main thread: its event loop (the rest is its threads')."""
    return cpu_seconds_of(f"/proc/{pid}/task/{pid}/stat")


def cpu_seconds_of(path: str) -> float:
    """utime + stime from a /proc stat file."""
    return sum(user_system_of(path))


def user_system_of(path: str) -> tuple[float, float]:
    """utime and stime, apart, from a /proc stat file."""
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def thread_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """User and system CPU seconds of each thread of a process, by thread id (the main
    thread's is `pid`)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            found[int(task.name)] = user_system_of(str(task / "stat"))
    return found


def thread_split(
    before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]], frames: int
) -> str:
    """µs per frame of the busiest threads, in thread-id order (creation order), as
    total (user+system): the kernel's share shows what syscalls and wakeups cost."""
    per = 1e6 / max(frames, 1)
    used = {
        tid: (u - before.get(tid, (0.0, 0.0))[0], s - before.get(tid, (0.0, 0.0))[1])
        for tid, (u, s) in after.items()
    }
    busy = sorted(tid for tid, (u, s) in used.items() if (u + s) * per >= 2)
    return ", ".join(
        f"{tid}: {(used[tid][0] + used[tid][1]) * per:.0f} "
        f"({used[tid][0] * per:.0f}+{used[tid][1] * per:.0f})"
        for tid in busy
    )


def runqueue_seconds(pid: int) -> float:
    """Time the process's main thread spent runnable but waiting for a core (schedstat):
    on a shared machine, how much the service was kept from running."""
    with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


def own_cpu_seconds() -> float:
    """This process's CPU time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mib(pid: int) -> float:
    """Resident set size in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def load_average() -> str:
    """The 1-minute load average, as uptime shows it."""
    return Path("/proc/loadavg").read_text().split()[0]


class FsyncProbe:
    """Appends 4 KiB and fdatasyncs, `rate` times a second, in a thread; times each."""

    def __init__(self, directory: Path, rate: float = 20.0) -> None:
        self._path = directory / "fsync-probe.bin"
        self._period = 1.0 / rate
        self._stop = threading.Event()
        self.samples: list[float] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FsyncProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError):
            self._path.unlink()

    def _run(self) -> None:
        block = os.urandom(4096)
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while not self._stop.wait(self._period):
                started = perf_counter()
                os.write(fd, block)
                os.fdatasync(fd)
                self.samples.append(perf_counter() - started)
        finally:
            os.close(fd)


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))]


# --- the generator: WebSocket over raw asyncio protocols -------------------------------


_MASK = b"\x00\x00\x00\x00"


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame (zero key: the payload goes as it is)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + _MASK + payload


@dataclass
class Tally:
    """What the acks of a run said."""

    accepted: int = 0
    frames: int = 0  # answers received
    measured: int = 0  # answers received inside the measured window
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    measuring: bool = False
    dry_at: float = 0.0  # when a connection first had no frame left to send


class Conn(asyncio.Protocol):
    """One device's WebSocket; frames carry ids, answers are matched by id (id 0: FIFO)."""

    def __init__(self, host: str, path: str, token: str, tally: Tally) -> None:
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(secrets.token_bytes(16)).decode()}\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode()
        self.tally = tally
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.pending: dict[int, tuple[float, bool]] = {}
        self.next_id = 1
        self.chunks: deque[Chunk] = deque()
        self.refill = False  # saturation: send the next frame on each answer
        self.cycle = False  # the echo: frames go round (it stores nothing)
        self.idle: asyncio.Event | None = None
        self._buf = bytearray()
        self._upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before upgrade: {exc}"))
        if self.pending:
            self.tally.errors["connection lost with frames in flight"] += len(self.pending)
            self.pending.clear()
        if self.idle is not None:
            self.idle.set()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self._upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            del buf[: end + 4]
            if b" 101 " not in status:
                self.opened.set_exception(ConnectionError(status.decode(errors="replace")))
                assert self.transport is not None
                self.transport.close()
                return
            self._upgraded = True
            self.opened.set_result(None)
        while len(buf) >= 2:
            n = buf[1] & 0x7F
            start = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, start = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, start = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < start + n:
                return
            opcode = buf[0] & 0x0F
            payload = bytes(buf[start : start + n])
            del buf[: start + n]
            if opcode == 0x1:
                self._answer(payload)
            elif opcode == 0x9:  # uvicorn pings every 20 s: answer, or it closes
                assert self.transport is not None
                self.transport.write(ws_frame(payload, 0xA))
            elif opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                self.tally.errors[f"closed by the server: {code} {payload[2:].decode()}"] += 1
                assert self.transport is not None
                self.transport.close()

    def _answer(self, payload: bytes) -> None:
        now = perf_counter()
        tally = self.tally
        answer = _answer.decode(payload)
        fid = answer.id or 0
        if fid == 0 and self.pending:  # the echo's fixed ack: the oldest frame
            fid = next(iter(self.pending))
        sent = self.pending.pop(fid, None)
        if sent is None:
            tally.errors[f"answer to an unknown frame {answer.id}: {answer.error}"] += 1
            return
        tally.frames += 1
        if sent[1]:
            tally.latencies.append(now - sent[0])
        if tally.measuring:
            tally.measured += 1
        if answer.error is not None:
            tally.errors[f"error: {answer.error[:120]}"] += 1
        elif len(answer.acks) != 1:
            tally.errors[f"expected 1 ack, got {len(answer.acks)}"] += 1
        elif answer.acks[0].result == "accepted":
            tally.accepted += 1
        else:
            ack = answer.acks[0]
            tally.errors[f"{ack.result} {ack.reason or ''}".strip()] += 1
        if self.refill and self.chunks:
            chunk = self.chunks.popleft()
            if self.cycle:
                self.chunks.append(chunk)
            self.send(chunk)
        elif self.refill and not tally.dry_at:
            tally.dry_at = now
        elif not self.pending and self.idle is not None:
            self.idle.set()

    def send(self, chunk: Chunk) -> None:
        """Send a chunk as the next frame."""
        if self.closed or self.transport is None:
            return
        fid = self.next_id
        self.next_id += 1
        self.pending[fid] = (perf_counter(), self.tally.measuring)
        self.transport.write(ws_frame(stream_frame(chunk, fid)))

    async def drain(self, wait_s: float = 120.0) -> None:
        """Wait until every frame sent has been answered (or the connection is gone)."""
        if not self.pending or self.closed:
            return
        self.idle = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle.wait(), wait_s)
        self.idle = None
        if self.pending:
            self.tally.errors["no answer within the drain time"] += len(self.pending)

    def close(self) -> None:
        """Close the socket (the server sees the peer go)."""
        if self.transport is not None and not self.closed:
            self.transport.write(ws_frame(b"\x03\xe8", 0x8))
            self.transport.close()


async def open_all(url: str, tokens: list[str], tally: Tally) -> list[Conn]:
    """One connection per token, `OPEN_AT_ONCE` handshakes at a time."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, len(tokens) + 1024)), hard))
    host_port = url.split("://", 1)[1]
    host, port = host_port.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(OPEN_AT_ONCE)

    async def one(token: str) -> Conn:
        async with gate:
            _, conn = await loop.create_connection(
                lambda: Conn(host_port, "/v1/stream", token, tally), host, int(port)
            )
            await conn.opened
            assert conn.transport is not None
            conn.transport.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
            )
            return conn

    return list(await asyncio.gather(*(one(t) for t in tokens)))


# --- provisioning and counting -----------------------------------------------------------


async def provision(db_url: str, count: int) -> list[Device]:
    """Register `count` devices with ids unique to this run."""
    from playproof.server import admin

    tag = secrets.token_hex(3)
    async with admin.opened(db_url) as store:
        return [
            Device(d, await admin.add_device(store, d, "store-1"), screenshots=True)
            for d in (f"bench-{tag}-{i:05d}" for i in range(count))
        ]


# --- saturation ------------------------------------------------------------------------------


@dataclass
class Saturation:
    """One saturation run against one server."""

    name: str
    frames_per_s: float
    cpu_us_per_frame: float
    loop_us_per_frame: float
    cpu_percent: float
    gen_cpu_percent: float
    p50_ms: float
    p99_ms: float
    tally: Tally


async def saturate(
    name: str,
    url: str,
    pid: int,
    devices: list[Device],
    window: int,
    seconds: float,
    *,
    reuse: bool,
) -> Saturation:
    """Every connection keeps `window` frames in flight for a warm-up, then `seconds` measured.

    `reuse` (the echo): each connection cycles through a few pre-built frames; otherwise
    every frame is a fresh record (the pool is sized from the warm-up's rate).
    """
    tally = Tally()
    conns = await open_all(url, [d.token for d in devices], tally)
    try:
        result = None
        warm = 2.0
        t_start = t_warm = 0.0
        for measured, length in ((False, warm), (True, seconds)):
            # The warm-up's rate sizes the measured pool (until a connection ran dry).
            rate = tally.frames / (min(tally.dry_at or t_warm, t_warm) - t_start) if measured else 0
            per_conn = int(rate * length * 1.5 / len(conns)) + 2 * window if measured else 300
            for conn, device in zip(conns, devices, strict=True):
                conn.cycle = reuse
                if reuse:
                    conn.chunks = deque(take(device, 1) for _ in range(2 * window))
                else:
                    conn.chunks = deque(take(device, 1) for _ in range(per_conn))
            tally.frames = tally.measured = 0
            tally.latencies = []
            tally.measuring = measured
            tally.dry_at = 0.0
            cpu0, gen0, t0 = cpu_seconds(pid), own_cpu_seconds(), perf_counter()
            main0 = loop_cpu_seconds(pid)
            t_start, t_warm = t0, t0 + warm
            for conn in conns:
                conn.refill = True
                for _ in range(window):
                    if conn.chunks:
                        conn.send(conn.chunks.popleft())
            await asyncio.sleep(length if measured else warm)
            for conn in conns:
                conn.refill = False
            tally.measuring = False
            elapsed = perf_counter() - t0
            cpu, gen = cpu_seconds(pid) - cpu0, own_cpu_seconds() - gen0
            main = loop_cpu_seconds(pid) - main0
            if measured and tally.dry_at and tally.dry_at < t0 + length:
                tally.errors["pool ran dry before the end: the rate is understated"] += 1
            await asyncio.gather(*(c.drain() for c in conns))
            for conn, device in zip(conns, devices, strict=True):
                if conn.chunks and not reuse:  # unsent records: the sequence stays gapless
                    device.next_seq = conn.chunks[0].first_seq
                conn.chunks.clear()
            frames = tally.measured if measured else tally.frames
            result = Saturation(
                name,
                frames / elapsed,
                1e6 * cpu / max(frames, 1),
                1e6 * main / max(frames, 1),
                100 * cpu / elapsed,
                100 * gen / elapsed,
                quantile(tally.latencies, 0.5) * 1000,
                quantile(tally.latencies, 0.99) * 1000,
                tally,
            )
        assert result is not None
        return result
    finally:
        for conn in conns:
            conn.close()
        await asyncio.sleep(0.2)


# --- paced ------------------------------------------------------------------------------------


@dataclass
class Paced:
    """One paced run."""

    connections: int
    period: float
    seconds: float
    frames: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_percent: float
    cpu_us_per_frame: float
    loop_us_per_frame: float
    rss_mib: float
    gen_cpu_percent: float
    lag_p99_ms: float
    fsync_p50_ms: float
    fsync_p99_ms: float
    fsync_max_ms: float
    open_s: float
    threads: str
    waited_percent: float
    tally: Tally


async def paced(
    url: str, pid: int, devices: list[Device], period: float, seconds: float, fsync_dir: Path
) -> Paced:
    """Each connection sends a 1-record frame every `period` s, spread evenly over the period.

    One period of warm-up (every connection sends once), then `seconds` measured.
    """
    tally = Tally()
    started = perf_counter()
    conns = await open_all(url, [d.token for d in devices], tally)
    open_s = perf_counter() - started
    n = len(conns)
    per_conn = 1 + int(seconds / period + 0.999)
    for conn, device in zip(conns, devices, strict=True):
        conn.chunks = deque(take(device, 1) for _ in range(per_conn))
    gap = period / n
    total = per_conn * n
    lags: list[float] = []
    rss_peak = 0.0
    stop_rss = asyncio.Event()

    async def sample_rss() -> None:
        nonlocal rss_peak
        while not stop_rss.is_set():
            rss_peak = max(rss_peak, rss_mib(pid))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_rss.wait(), 0.2)

    try:
        with FsyncProbe(fsync_dir) as probe:
            t0 = perf_counter() + 0.5
            measure_from = n  # the first period is the warm-up
            cpu0 = gen0 = m0 = main0 = 0.0
            threads0: dict[int, tuple[float, float]] = {}
            waited0 = 0.0
            sampler: asyncio.Task[None] | None = None
            for j in range(total):
                if j == measure_from:
                    probe.samples.clear()
                    tally.measuring = True
                    cpu0, gen0, m0 = cpu_seconds(pid), own_cpu_seconds(), perf_counter()
                    main0 = loop_cpu_seconds(pid)
                    threads0 = thread_cpu(pid)
                    waited0 = runqueue_seconds(pid)
                    sampler = asyncio.create_task(sample_rss())
                due = t0 + j * gap
                delay = due - perf_counter()
                if delay > 0.0005:
                    await asyncio.sleep(delay)
                if tally.measuring:
                    lags.append(perf_counter() - due)
                conn = conns[j % n]
                if conn.chunks:
                    conn.send(conn.chunks.popleft())
            # The measured window ends one gap after the last frame was due.
            await asyncio.sleep(max(0.0, t0 + total * gap - perf_counter()))
            elapsed = perf_counter() - m0
            cpu, gen = cpu_seconds(pid) - cpu0, own_cpu_seconds() - gen0
            main = loop_cpu_seconds(pid) - main0
            waited = runqueue_seconds(pid) - waited0
            threads = thread_split(threads0, thread_cpu(pid), len(tally.latencies))
            tally.measuring = False
            stop_rss.set()
            if sampler is not None:
                await sampler
            await asyncio.gather(*(c.drain() for c in conns))
            fsyncs = list(probe.samples)
    finally:
        for conn in conns:
            conn.close()
        await asyncio.sleep(0.5)
    measured = len(tally.latencies)
    return Paced(
        n,
        period,
        elapsed,
        measured,
        quantile(tally.latencies, 0.5) * 1000,
        quantile(tally.latencies, 0.99) * 1000,
        max(tally.latencies, default=float("nan")) * 1000,
        100 * cpu / elapsed,
        1e6 * cpu / max(measured, 1),
        1e6 * main / max(measured, 1),
        rss_peak,
        100 * gen / elapsed,
        quantile(lags, 0.99) * 1000,
        quantile(fsyncs, 0.5) * 1000,
        quantile(fsyncs, 0.99) * 1000,
        max(fsyncs, default=float("nan")) * 1000,
        open_s,
        threads,
        100 * waited / elapsed,
        tally,
    )


# --- the run --------------------------------------------------------------------------------


def machine() -> str:
    """What the figures were measured on."""
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({model}), Python {sys.version.split()[0]}"


def check(db_url: str, before: int, accepted: int) -> bool:
    """The database gained exactly the records acknowledged accepted."""
    gained = count_rows(db_url) - before
    ok = gained == accepted
    mark = "OK" if ok else "MISMATCH"
    print(f"exactly-once {mark}: database gained {gained:,}; {accepted:,} acknowledged accepted")
    return ok


def show_errors(name: str, tally: Tally) -> None:
    """The errors a run saw, if any."""
    for what, count in tally.errors.most_common(6):
        print(f"  ERROR {name}: {count:,} × {what}")


async def run(args: argparse.Namespace) -> int:
    """Run the chosen modes; exit status 1 on any error or a count that is off."""
    pin = not args.no_pin
    if pin:
        os.sched_setaffinity(0, {GENERATOR_CORE})
    where = (
        f"servers pinned to core {SERVER_CORE}, generator to core {GENERATOR_CORE} (taskset)"
        if pin
        else "servers and generator share the cores"
    )
    print(f"{machine()}; {where}; ws={args.ws}; load average {load_average()}")
    clean = True
    with tempfile.TemporaryDirectory(prefix="playproof-stream-", dir=args.tmp) as tmp:
        db_url = args.db or f"sqlite:///{Path(tmp) / 'playproof.db'}"
        fsync_dir = Path(db_url.removeprefix("sqlite:///")).parent if not args.db else Path(tmp)
        modes = ["saturation", "paced"] if args.mode == "both" else args.mode.split(",")
        if "saturation" in modes:
            clean &= await run_saturation(args, db_url, pin)
        if "paced" in modes:
            for conns, period, seconds in args.paced:
                clean &= await run_paced(args, db_url, pin, conns, period, seconds, fsync_dir)
    return 0 if clean else 1


async def run_saturation(args: argparse.Namespace, db_url: str, pin: bool) -> bool:
    """The service, then the echo, at saturation; the ratio."""
    devices = await provision(db_url, args.saturation_connections)
    before = count_rows(db_url)
    results = []
    server = playproof_server(args, db_url, pin)
    url = server.start()
    try:
        profile = start_profile(args, server.pid, "saturation")
        ours = await saturate(
            "playproof", url, server.pid, devices, args.window, args.duration, reuse=False
        )
        stop_profile(profile)
        commits = server.metrics()
    finally:
        server.stop()
    results.append(ours)
    accepted_ok = check(db_url, before, ours.tally.accepted)
    echo = echo_server(args.ws, pin)
    url = echo.start()
    try:
        ref = await saturate("echo", url, echo.pid, devices, args.window, args.duration, reuse=True)
    finally:
        echo.stop()
    results.append(ref)
    conns = args.saturation_connections
    print(
        f"saturation: {conns} connections × {args.window} in flight, 1-record frames, "
        f"{args.duration:g} s measured"
    )
    for r in results:
        print(
            f"  {r.name:9} {r.frames_per_s:9,.0f} frames/s  server CPU {r.cpu_percent:5.1f} % "
            f"= {r.cpu_us_per_frame:6.1f} µs/frame (event loop {r.loop_us_per_frame:5.1f})  "
            f"ack p50 {r.p50_ms:6.2f} ms "
            f"p99 {r.p99_ms:6.2f} ms  generator CPU {r.gen_cpu_percent:5.1f} %"
        )
        show_errors(r.name, r.tally)
    print(f"  playproof {per_commit(commits)} (whole run, warm-up included)")
    ratio = ours.frames_per_s / ref.frames_per_s
    print(
        f"  playproof / echo = {100 * ratio:.0f} % (target ≥ 50 %); "
        f"{ours.cpu_us_per_frame:.1f} µs/frame (target ≤ 50)"
    )
    # The echo at half its frames/s is 2 × its CPU a frame on the same core.
    floor_ok = args.no_floor or floor.check_floor(
        args,
        conns,
        commits,
        SERVER_CORE if pin else None,
        ("the echo's framework path", ref.cpu_us_per_frame),
        ("50 % of the echo's frames/s", 2 * ref.cpu_us_per_frame),
    )
    return accepted_ok and floor_ok and not any(r.tally.errors for r in results)


async def run_paced(
    args: argparse.Namespace,
    db_url: str,
    pin: bool,
    conns: int,
    period: float,
    seconds: float,
    fsync_dir: Path,
) -> bool:
    """One paced run on a fresh service process."""
    devices = await provision(db_url, conns)
    before = count_rows(db_url)
    server = playproof_server(args, db_url, pin)
    url = server.start()
    try:
        profile = start_profile(args, server.pid, f"paced-{conns}")
        r = await paced(url, server.pid, devices, period, seconds, fsync_dir)
        stop_profile(profile)
        commits = server.metrics()
    finally:
        server.stop()
    for line in server.log:
        if line.startswith(("gc pause", "SLOW", "CKPT", "RESTARTCK")):
            print(f"  {line}")
    print(
        f"paced: {r.connections:,} connections × 1 frame every {r.period:g} s "
        f"({r.connections / r.period:,.0f} frames/s), {r.seconds:.1f} s measured, "
        f"{r.frames:,} frames (connections opened in {r.open_s:.1f} s)"
    )
    print(
        f"  ack p50 {r.p50_ms:.2f} ms  p99 {r.p99_ms:.2f} ms  max {r.max_ms:.1f} ms  |  "
        f"service CPU {r.cpu_percent:.1f} % of a core ({r.cpu_us_per_frame:.0f} µs/frame, "
        f"event loop {r.loop_us_per_frame:.0f})  "
        f"RSS peak {r.rss_mib:.0f} MiB  |  disk fdatasync p50 {r.fsync_p50_ms:.2f} ms "
        f"p99 {r.fsync_p99_ms:.2f} ms max {r.fsync_max_ms:.1f} ms  |  generator CPU "
        f"{r.gen_cpu_percent:.1f} %, send lag p99 {r.lag_p99_ms:.2f} ms"
    )
    print(f"  {per_commit(commits)} (whole run, warm-up included)")
    print(f"  µs per frame by thread (id: µs (user+system)): {r.threads}")
    print(
        f"  the event loop waited for its core {r.waited_percent:.1f} % of the time "
        "(runnable, not running: behind other processes or its own threads)"
    )
    show_errors("paced", r.tally)
    ok = check(db_url, before, r.tally.accepted)
    if args.paced_echo:
        echo = echo_server(args.ws, pin)
        url = echo.start()
        try:
            e = await paced(url, echo.pid, devices, period, seconds, fsync_dir)
        finally:
            echo.stop()
        print(
            f"  echo on the same schedule: ack p50 {e.p50_ms:.2f} ms p99 {e.p99_ms:.2f} ms, "
            f"CPU {e.cpu_percent:.1f} % of a core ({e.cpu_us_per_frame:.0f} µs/frame), "
            f"RSS {e.rss_mib:.0f} MiB"
        )
        if not args.no_floor:
            rate = conns / period
            ok &= floor.check_floor(
                args,
                conns,
                commits,
                SERVER_CORE if pin else None,
                ("the echo on this schedule", e.cpu_us_per_frame),
                (f"25 % of a core at {rate:,.0f} frames/s", 0.25e6 / rate),
            )
    return ok and not r.tally.errors


def per_commit(commits: dict[str, float]) -> str:
    """Frames (batches) per group commit, from the service's own histogram."""
    count = commits.get("playproof_commit_batches_count", 0.0)
    if not count:
        return "group commits: not scraped"
    total = commits.get("playproof_commit_batches_sum", 0.0)
    return f"group commits: {count:,.0f}, {total / count:.2f} frames each"


def start_profile(args: argparse.Namespace, pid: int, name: str) -> subprocess.Popen[bytes] | None:
    """py-spy on the server for the run, when --profile DIR is given."""
    if not args.profile:
        return None
    out = Path(args.profile) / f"{name}.txt"
    cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-r", "250"]
    cmd += ["-f", "raw", "-o", str(out), "--nonblocking"]
    if args.native:
        cmd.append("--native")
    if args.gil:  # only the thread holding the GIL: Python's CPU, not threads waiting on I/O
        cmd.append("--gil")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profile(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop py-spy (SIGINT: it writes its file)."""
    if proc is not None:
        proc.send_signal(2)
        proc.wait(30)


def paced_spec(text: str) -> tuple[int, float, float]:
    """CONNECTIONS:PERIOD:SECONDS."""
    conns, period, seconds = text.split(":")
    return int(conns), float(period), float(seconds)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mode", default="saturation,paced", help="saturation, paced or both")
    p.add_argument("--duration", type=float, default=10.0, help="saturation: seconds measured")
    p.add_argument("--saturation-connections", type=int, default=100)
    p.add_argument("--window", type=int, default=8, help="saturation: frames in flight")
    p.add_argument(
        "--paced",
        type=paced_spec,
        action="append",
        help="CONNECTIONS:PERIOD_S:SECONDS, repeatable (default 1000:1:20 and 10000:10:30)",
    )
    p.add_argument("--ws", default="websockets-sansio", help="uvicorn ws implementation")
    p.add_argument("--db", help="database URL (default: a fresh SQLite file)")
    p.add_argument("--tmp", help="directory for the SQLite file (default: the system's)")
    p.add_argument("--no-pin", action="store_true", help="do not pin servers and generator")
    p.add_argument("--serve-arg", action="append", default=[], help="extra `serve` argument")
    p.add_argument(
        "--paced-echo", action="store_true", help="also run each paced schedule on the echo"
    )
    p.add_argument("--gc-log", action="store_true", help="the service prints its GC pauses")
    p.add_argument(
        "--no-floor",
        action="store_true",
        help="skip the store's own cost of the frames (saturation; paced with --paced-echo)",
    )
    p.add_argument("--pythonpath", help="import the service from here (a before/after tree)")
    p.add_argument("--profile", help="py-spy each server run into this directory (raw)")
    p.add_argument("--native", action="store_true", help="py-spy --native")
    p.add_argument("--gil", action="store_true", help="py-spy --gil")
    p.add_argument("--serve", choices=["echo", "playproof"], help=argparse.SUPPRESS)
    p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.paced is None:
        args.paced = [(1000, 1.0, 20.0), (10_000, 10.0, 30.0)]
    return args


def main() -> int:
    """Entry point."""
    args = parse()
    if args.serve == "echo":
        serve_echo(args.ws)
        return 0
    if args.serve == "playproof":
        serve_playproof(args.ws, args.rest)
        return 0
    started = time.time()
    status = uvloop.run(run(args))
    print(f"done in {time.time() - started:.0f} s; load average {load_average()}")
    return status


if __name__ == "__main__":
    sys.exit(main())
