"""The device clock: NTP-corrected wall time, sync age, drift and step detection.

Every timestamp a device sends is `raw wall clock + offset`. The offset is the
estimate of the last SNTP exchange (RFC 4330: ntplib builds and parses the
packets, the exchange itself is a non-blocking asyncio datagram, so thousands
of devices share one event loop). When no NTP server has answered for longer
than the sync age limit, the service's `received_at` in acks is a second
estimate (Cristian's method: server time plus half the round trip).

Durations never come from the wall clock: they are monotonic. The wall clock is
watched against the monotonic one; a jump between them (a step: someone set the
clock, or a daemon stepped it) is compensated in the offset at once, so the
corrected clock stays continuous, counted, and a new sync is requested.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final, NamedTuple

import ntplib

from playproof.device.backoff import wait_event
from playproof.errors import DeviceError
from playproof.rules import DEFAULT_POLICY, Policy

log = logging.getLogger(__name__)

NTP_PORT: Final = 123
# A step is a jump of the wall clock against the monotonic one beyond this, plus
# the slack a free-running oscillator may drift in the time since the last look.
STEP_THRESHOLD_MS: Final = 500.0
STEP_SLACK_PPM: Final = 500.0
DRIFT_SAMPLES: Final = 8
SERVICE_SAMPLES: Final = 8


class NtpServer(NamedTuple):
    """An NTP server's host and UDP port."""

    host: str
    port: int = NTP_PORT

    def __str__(self) -> str:
        """`host:port`."""
        return f"{self.host}:{self.port}"


def parse_server(text: str) -> NtpServer:
    """`host` or `host:port` (IPv6 as `[addr]:port`) as an NtpServer; DeviceError if not."""
    host, port = text, str(NTP_PORT)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or port
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeviceError(f"expected an NTP server as host or host:port, got {text!r}")
    return NtpServer(host, int(port))


# A stamp's wall and monotonic reads are at most this far apart (monotonic seconds at
# rate 1), unless SPLIT_READS attempts in a row were preempted.
SPLIT_S: Final = 0.00025
SPLIT_READS: Final = 4


class Sample(NamedTuple):
    """One SNTP exchange: offset and round-trip delay in ms, when (monotonic s), with whom."""

    offset_ms: float
    delay_ms: float
    mono: float
    server: str


class Stamp(NamedTuple):
    """A reading of the clock: everything a record needs from one instant."""

    ts_ms: int
    raw_ms: float
    mono: float
    offset_ms: int
    synced: bool
    steps: int


class Clock:
    """NTP-corrected time for one device; the raw clocks are injectable for tests."""

    def __init__(
        self,
        servers: Sequence[NtpServer] = (),
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        policy: Policy = DEFAULT_POLICY,
        interval_s: float = 900.0,
        timeout_s: float = 2.0,
        rate: float = 1.0,
    ) -> None:
        self.servers = tuple(servers)
        # Seconds of `monotonic` per real second: 1 but for simulations, whose clocks run
        # fast; waits on this clock's time (the screenshot moment) are divided by it.
        self.rate = rate
        self._wall = wall
        self._mono = monotonic
        self.policy = policy
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._offset_ms = 0.0
        self._last_sync: Sample | None = None
        self._last_sync_ts: int | None = None
        self._drift: deque[tuple[float, float]] = deque(maxlen=DRIFT_SAMPLES)
        self._service: deque[tuple[float, float, float]] = deque(maxlen=SERVICE_SAMPLES)
        self._anchor = (self._raw_ms(), self._mono())
        self.steps = 0
        self.last_step_ms = 0.0
        self.source = "none"
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self.on_change: Callable[[], None] = _nothing

    # --- reading ------------------------------------------------------------

    def _raw_ms(self) -> float:
        return self._wall() * 1000.0

    def _instant(self) -> tuple[float, float]:
        """The raw wall clock (ms) and the monotonic clock (s) read together: again, a few
        times at most, when the process was preempted between the two reads. A play's
        end time comes from one and its duration from the other, and a split read would
        set them apart by as long as the process waited (3 ms, seen on a loaded machine)."""
        for _ in range(SPLIT_READS):
            before = self._mono()
            raw = self._raw_ms()
            mono = self._mono()
            if mono - before <= SPLIT_S * self.rate:
                break
        return raw, mono

    def stamp(self) -> Stamp:
        """Read raw, monotonic and corrected time at one instant, watching for steps."""
        raw, mono = self._instant()
        self._watch(raw, mono)
        offset = round(self._offset_ms)
        synced = self.synced(mono)
        return Stamp(round(raw + offset), raw, mono, offset, synced, self.steps)

    def now_ms(self) -> int:
        """The corrected wall clock: UTC epoch milliseconds."""
        return self.stamp().ts_ms

    def monotonic(self) -> float:
        """The monotonic clock this Clock reads, in seconds."""
        return self._mono()

    def synced(self, mono: float | None = None) -> bool:
        """Whether the last successful NTP exchange is at most `sync_max_age_ms` old."""
        if self._last_sync is None:
            return False
        now = self._mono() if mono is None else mono
        return (now - self._last_sync.mono) * 1000.0 <= self.policy.sync_max_age_ms

    @property
    def offset_ms(self) -> int:
        """The offset applied to the raw clock now, in ms."""
        return round(self._offset_ms)

    @property
    def last_sync_ts(self) -> int | None:
        """Corrected UTC ms of the last successful NTP exchange, or None."""
        return self._last_sync_ts

    @property
    def drift_ppm(self) -> float | None:
        """The trend of the NTP offset, in ppm (µs per s); positive: the raw clock lags."""
        if len(self._drift) < 2:
            return None
        xs = [m for m, _ in self._drift]
        ys = [o for _, o in self._drift]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        if var <= 0:
            return None
        slope_ms_per_s = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
        return round(slope_ms_per_s * 1000.0, 3)

    # --- steps --------------------------------------------------------------

    def _watch(self, raw: float, mono: float) -> None:
        anchor_raw, anchor_mono = self._anchor
        self._anchor = (raw, mono)
        elapsed_ms = max(0.0, (mono - anchor_mono) * 1000.0)
        step = raw - (anchor_raw + elapsed_ms)
        if abs(step) > STEP_THRESHOLD_MS + elapsed_ms * STEP_SLACK_PPM / 1e6:
            self._stepped(step)

    def _stepped(self, step_ms: float) -> None:
        # Keep corrected time continuous: what the raw clock jumped, the offset takes back.
        self._offset_ms -= step_ms
        self.steps += 1
        self.last_step_ms = step_ms
        self._drift.clear()
        self._service.clear()
        log.warning("wall clock stepped by %+.0f ms; compensated, resyncing", step_ms)
        self.request_sync()
        self.on_change()

    # --- NTP ----------------------------------------------------------------

    async def sync(self) -> Sample | None:
        """Ask every configured server once; apply the answer with the shortest round trip."""
        if not self.servers:
            return None
        self.stamp()
        results = await asyncio.gather(*(self._exchange(s) for s in self.servers))
        samples = [r for r in results if isinstance(r, Sample)]
        if not samples:
            errors = "; ".join(str(r) for r in results)
            self._failed(f"no NTP server answered: {errors}")
            return None
        best = min(samples, key=lambda s: s.delay_ms)
        self._apply(best)
        return best

    def _failed(self, message: str) -> None:
        if message != self.last_error:
            log.warning("%s; %s", message, self._fallback_note())
        self.last_error = message
        self._use_service_estimate()

    def _fallback_note(self) -> str:
        if self.synced():
            return "keeping the last NTP offset"
        return "records are marked clock_synced=false"

    def _apply(self, sample: Sample) -> None:
        if self.last_error is not None or self._last_sync is None:
            log.info("NTP sync with %s: offset %+.1f ms", sample.server, sample.offset_ms)
        self.stamp()
        self._offset_ms = sample.offset_ms
        self._last_sync = sample
        self._last_sync_ts = round(self._raw_ms() + sample.offset_ms)
        self._drift.append((sample.mono, sample.offset_ms))
        self.source = "ntp"
        self.last_error = None
        self.on_change()

    async def _exchange(self, server: NtpServer) -> Sample | str:
        """One SNTP request and reply; the error text instead of a sample on failure."""
        try:
            return await self._exchange_or_raise(server)
        except (OSError, TimeoutError, ntplib.NTPException, DeviceError) as exc:
            return f"{server}: {_describe(exc)}"

    async def _exchange_or_raise(self, server: NtpServer) -> Sample:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[bytes] = loop.create_future()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Reply(reply), remote_addr=(server.host, server.port)
        )
        try:
            t1, m1 = self._wall(), self._mono()
            request = ntplib.NTPPacket(
                version=3, mode=3, tx_timestamp=ntplib.system_to_ntp_time(t1)
            ).to_data()
            transport.sendto(request)
            data = await asyncio.wait_for(reply, self.timeout_s)
            m4 = self._mono()
        finally:
            transport.close()
        # t4 from the monotonic clock, so that a step during the exchange cannot skew it.
        return _sample(request, data, t1, t1 + (m4 - m1), m4, str(server))

    async def run(self, sync_first: bool = True) -> None:
        """Sync (now, unless told not to), then on schedule and on demand, until cancelled."""
        if not self.servers:
            log.info("no NTP server configured: records are marked clock_synced=false")
            return
        failures = 0 if self._last_sync else 1
        while True:
            if sync_first:
                self._wake.clear()
                ok = await self.sync() is not None
                failures = 0 if ok else failures + 1
            sync_first = True
            await wait_event(self._wake, self._next_wait(failures))

    def _next_wait(self, failures: int) -> float:
        """The schedule: `interval_s` when in sync, sooner (15 s, doubling) after failures."""
        if failures == 0:
            return self.interval_s
        return min(self.interval_s, 15.0 * float(2 ** min(failures - 1, 6)))

    def request_sync(self) -> None:
        """Ask `run` to sync now (after a step, or when an operator asks)."""
        self._wake.set()

    # --- the service as a second estimate ----------------------------------

    def observe_service_time(
        self, received_at_ms: int, sent_mono: float, acked_mono: float
    ) -> None:
        """Feed an ack's `received_at` (Cristian's method) as a fallback time estimate."""
        rtt_ms = max(0.0, (acked_mono - sent_mono) * 1000.0)
        now = self.stamp()
        raw_at_ack = now.raw_ms - (now.mono - acked_mono) * 1000.0
        estimate = received_at_ms + rtt_ms / 2 - raw_at_ack
        self._service.append((rtt_ms, estimate, acked_mono))
        self._use_service_estimate()

    def _use_service_estimate(self) -> None:
        if self.synced() or not self._service:
            return
        rtt, estimate, _ = min(self._service)
        # Cristian's error is at most half the round trip: move only beyond it.
        if self.source != "service" or abs(estimate - self._offset_ms) > rtt / 2 + 1:
            self._offset_ms = estimate
            if self.source != "service":
                log.info("no fresh NTP sync: using the service's clock, offset %+.0f ms", estimate)
                self.source = "service"
                self.on_change()


class _Reply(asyncio.DatagramProtocol):
    """Resolves a future with the first datagram, or with the socket's error."""

    def __init__(self, future: asyncio.Future[bytes]) -> None:
        self.future = future

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        """Take the first reply."""
        if not self.future.done():
            self.future.set_result(data)

    def error_received(self, exc: Exception) -> None:
        """An ICMP error (port unreachable): fail now rather than at the timeout."""
        if not self.future.done():
            self.future.set_exception(exc)


def _sample(request: bytes, data: bytes, t1: float, t4: float, mono: float, server: str) -> Sample:
    """Check a server's reply to `request` and compute offset and delay (RFC 4330)."""
    reply = ntplib.NTPPacket()
    reply.from_data(data)
    if reply.mode != 4 or not 1 <= reply.stratum <= 15 or reply.leap == 3:
        raise DeviceError(
            f"expected a synchronized server reply, got mode {reply.mode}, "
            f"stratum {reply.stratum}, leap {reply.leap}"
        )
    # The server echoes our transmit timestamp: anything else is not an answer to us.
    if data[24:32] != request[40:48]:
        raise DeviceError("reply does not answer our request (originate timestamp differs)")
    t2 = ntplib.ntp_to_system_time(reply.recv_timestamp)
    t3 = ntplib.ntp_to_system_time(reply.tx_timestamp)
    offset = ((t2 - t1) + (t3 - t4)) / 2
    delay = (t4 - t1) - (t3 - t2)
    if not math.isfinite(offset):
        raise DeviceError("reply carries no usable timestamps")
    return Sample(offset * 1000.0, max(0.0, delay * 1000.0), mono, server)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer (timeout)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _nothing() -> None:
    return None
