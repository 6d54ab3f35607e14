"""Delivery: the journal's records to the service, exactly once counted, oldest first.

The stream is tried first; when it cannot be had, HTTP batch upload takes over
(and the stream is tried again every `stream_retry_s`). When both are down the
recorder keeps writing to the journal, and delivery retries with exponential
backoff and full jitter (at least what a Retry-After asks), draining oldest
first as soon as a transport answers. Records leave the journal only on a final
ack; everything else is sent again. Bad credentials and refused requests are
surfaced (state, last_error, status messages) and retried slowly.

The device key is registered here too (keys.Registrar), once the journal holds no
undelivered version-1 record; a refusal is an alarm in status, not a crash.

Status messages go out every `status_interval_s` and on change. The stream's
status frames get no answer, so a status that reports evictions goes by HTTP,
whose 204 says it was stored; only then are those evictions forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import random
import ssl
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import httpx
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException

from playproof.device.backoff import Backoff, wait_event
from playproof.device.blocking import run_blocking
from playproof.device.clock import Clock
from playproof.device.journal import EvictedRange, Journal, Pending, look_back
from playproof.device.keys import REGISTER_TIMEOUT_S, SEAL_WAIT_S, DeviceKey, Registrar
from playproof.device.ledger import outcome_of
from playproof.device.panel import PanelMonitor
from playproof.device.screenshot import ScreenshotStore
from playproof.device.stream import IDLE_POLL_S, StreamSession
from playproof.device.transport import (
    FINAL_RESULTS,
    HTTP,
    STREAM,
    AckView,
    BadCredentials,
    Refused,
    RetryLater,
    TransportDown,
    UplinkConfig,
    ack_decoder,
    classify,
    envelope,
    tls_context,
)
from playproof.errors import DeviceError
from playproof.protocol import Status, encode
from playproof.rules import DEFAULT_POLICY, Policy, skew_band

log = logging.getLogger(__name__)

OFFLINE: Final = "offline"
UNAUTHORIZED: Final = "unauthorized"
REFUSED: Final = "refused"
STATUS_MIN_GAP_S: Final = 2.0
SCREENSHOT_RETRY_S: Final = 60.0
GZIP_INLINE_BYTES: Final = 64 * 1024


class Uplink:
    """Delivers one device's journal; run it as a task with `run`."""

    def __init__(
        self,
        config: UplinkConfig,
        journal: Journal,
        clock: Clock,
        *,
        shots: ScreenshotStore | None = None,
        policy: Policy = DEFAULT_POLICY,
        rng: random.Random | None = None,
        key: DeviceKey | None = None,
        panel: PanelMonitor | None = None,
        unsaved_unsigned: Callable[[], int] | None = None,
        soonest_end: Callable[[], float | None] | None = None,
    ) -> None:
        self.config = config
        self.key = key
        self.panel = panel
        # Version-1 records sealed but not yet in the journal (the recorder's retries).
        self._unsaved_unsigned = unsaved_unsigned or (lambda: 0)
        # When the first open play is due to end (seconds; None: none open).
        self._soonest_end = soonest_end or (lambda: None)
        # Set by every ack: the registrar waits on it for version-1 records to leave.
        self.delivered = asyncio.Event()
        self.journal = journal
        self.clock = clock
        self.shots = shots
        self.policy = policy
        self.device_id = journal.device_id
        self.ready = asyncio.Event()
        self.state = "starting"
        self.last_error: str | None = None
        self.results: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self._rng = rng or random.Random()
        self._backoff = Backoff(config.backoff_base_s, config.backoff_cap_s, self._rng)
        self._skew: tuple[int, int] | None = None
        self._status_due = asyncio.Event()
        self._shots_due = asyncio.Event()
        self._retry_now = asyncio.Event()
        self._acked = asyncio.Event()
        self._session: StreamSession | None = None
        self._stream_was_up = False
        self._http: httpx.AsyncClient | None = None
        self._http_records = config.batch_records
        self._tls: ssl.SSLContext | None = None
        # Simulation only (the fleet simulator): the network is cut while set.
        self.offline = False
        # Called with each stream frame's round trip, in real seconds (benchmarks).
        self.on_round_trip: Callable[[float], None] | None = None
        # Set once `run` has made its first registration attempt (keys.Registrar.first).
        self._first_attempt = asyncio.Event()
        # Registers the device key until acknowledged (None: nothing to register).
        self._registration = (
            self._registrar(key) if key is not None and not key.acknowledged else None
        )

    # --- signals from the recorder and the clock ---------------------------

    def notify(self) -> None:
        """New records are ready (and maybe evictions to report)."""
        self.ready.set()

    def notify_status(self) -> None:
        """Something a status message reports has changed."""
        self._status_due.set()

    def notify_screenshot(self) -> None:
        """A new screenshot waits for upload."""
        self._shots_due.set()

    def retry_now(self) -> None:
        """Cut the current backoff short (an operator, or shutdown, wants a try now)."""
        self._retry_now.set()

    def set_offline(self, offline: bool) -> None:
        """Simulation only: cut the network (open connections dropped) or give it back."""
        self.offline = offline
        if offline and self._session is not None:
            self._session.abort()
        elif not offline:
            self.retry_now()

    def until_ts(self) -> int:
        """Records ending after this corrected time wait: sent now, they would be 'future'."""
        return self.clock.now_ms() + self.policy.future_tolerance_ms // 2

    def check_skew(self) -> None:
        """Hold records while the service's clock is too far from ours: they would be lost."""
        if self._skew is None:
            return
        skew, lead_then = self._skew
        predicted = skew + (self._clock_lead() - lead_then)
        if skew_band(predicted, self.policy) == "reject":
            raise RetryLater(
                f"the service clock is {predicted / 60000:+.1f} min from ours: "
                "records held back rather than rejected as clock_skew",
                60.0,
            )

    # --- running ------------------------------------------------------------

    async def run(self) -> None:
        """Deliver, report status and upload screenshots until cancelled."""
        self._tls = await run_blocking(tls_context)
        async with self._client() as http:
            self._http = http
            if self._registration is not None and not self.offline:
                await self._registration.first()
            self._first_attempt.set()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._deliver_forever())
                group.create_task(self._status_forever())
                group.create_task(self._screenshots_forever())
                if self._registration is not None:
                    group.create_task(self._registration.run())

    def _client(self) -> httpx.AsyncClient:
        cfg = self.config
        return httpx.AsyncClient(
            base_url=cfg.server_url,
            headers={"Authorization": f"Bearer {cfg.token}"},
            timeout=httpx.Timeout(cfg.request_timeout_s, connect=cfg.connect_timeout_s),
            limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
            verify=self._tls or True,
        )

    async def _deliver_forever(self) -> None:
        while True:
            delay = await self._round()
            self._retry_now.clear()
            if delay > 0:
                log.debug("next delivery try in %.1f s", delay)
                await wait_event(self._retry_now, delay)

    async def _round(self) -> float:
        """One try of the transports in order; the delay before the next."""
        try:
            await self._try_transports()
        except BadCredentials as exc:
            self._set_state(UNAUTHORIZED, str(exc))
            return self._long_wait(self.config.auth_backoff_s)
        except Refused as exc:
            self._set_state(REFUSED, str(exc))
            return self._long_wait(self.config.refused_backoff_s)
        except RetryLater as exc:
            self._set_state(OFFLINE, str(exc))
            return self._backoff.next_delay(exc.after_s)
        except TransportDown as exc:
            self._set_state(OFFLINE, str(exc))
            return self._backoff.next_delay()
        return 0.0

    async def _try_transports(self) -> None:
        if self.offline:
            raise TransportDown("network cut (simulated offline)")
        if STREAM not in self.config.transports:
            await self._http_round()
            return
        try:
            await self._stream_round()
        except (TransportDown, RetryLater) as exc:
            # A stream that was up and closed (idle, restart) is simply reopened;
            # one that cannot be had at all gives way to HTTP for a while.
            if self._stream_was_up or HTTP not in self.config.transports:
                raise
            log.debug("stream unavailable (%s); trying HTTP", exc)
            await self._http_round()

    def _long_wait(self, base_s: float) -> float:
        return base_s * self._rng.uniform(0.5, 1.5)

    def _set_state(self, state: str, error: str | None = None) -> None:
        if error is not None:
            self.last_error = error
        if state == self.state:
            return
        if state in (UNAUTHORIZED, REFUSED):
            log.error("delivery %s: %s", state, error)
        elif state == OFFLINE:
            log.warning("delivery interrupted, recording into the journal: %s", error)
        else:
            log.info("delivering over %s", state)
            self.last_error = None
            self._shots_due.set()
        self.state = state
        self._status_due.set()

    def _clock_lead(self) -> int:
        """Our corrected clock less the monotonic one, in ms: how far it has moved since an
        ack is how far the service's skew has. Offset changes alone would count a wall
        clock step the clock compensated (corrected time unmoved) as a skew of its size."""
        stamp = self.clock.stamp()
        return stamp.ts_ms - round(stamp.mono * 1000.0)

    # --- acks ---------------------------------------------------------------

    async def take_acks(
        self,
        acks: Sequence[AckView],
        seqs: Sequence[int],
        received_at: int,
        skew_ms: int | None,
        sent_mono: float,
        via: str,
    ) -> None:
        """Apply a batch's acks: final ones leave the journal; the clock learns the service's."""
        if skew_ms is not None:
            self._skew = (skew_ms, self._clock_lead())
        self.clock.observe_service_time(received_at, sent_mono, self.clock.monotonic())
        final, outcomes = self._tally(acks)
        missing = set(seqs) - set(final)
        if missing:
            log.warning("no ack for %d record(s) sent; they will be sent again", len(missing))
        await self.journal.remove(final, outcomes)
        self._acked.set()
        self.delivered.set()
        self._backoff.reset()
        self._set_state(via)

    def _tally(self, acks: Sequence[AckView]) -> tuple[list[int], list[str]]:
        final: list[int] = []
        outcomes: list[str] = []
        rejected: defaultdict[str, list[int]] = defaultdict(list)
        for ack in acks:
            self.results[ack.result] += 1
            if ack.seq is None or ack.result not in FINAL_RESULTS:
                # Only the protocol's three results are final; anything else is
                # kept and sent again, never deleted on a guess.
                continue
            final.append(ack.seq)
            outcomes.append(outcome_of(ack.result, ack.status, ack.reason))
            if ack.result == "rejected":
                rejected[str(ack.reason)].append(ack.seq)
        for reason, seqs in rejected.items():
            self.rejected[reason] += len(seqs)
            log.warning("service rejected %d record(s) as %s: seq %s", len(seqs), reason, seqs[:20])
        return final, outcomes

    # --- the device key ---------------------------------------------------------

    def _registrar(self, key: DeviceKey) -> Registrar:
        rng = self._rng
        return Registrar(
            key,
            put=self._put_key,
            online=lambda: self.state in (STREAM, HTTP) and not self.offline,
            unsigned=self._unsigned_waiting,
            soonest_end=self._soonest_end,
            delivered=self.delivered,
            on_change=self.notify_status,
            backoff=Backoff(self.config.backoff_base_s, self.config.backoff_cap_s, rng),
            rare_retry_s=self.config.key_retry_s,
            rng=rng,
        )

    async def register_first(self) -> None:
        """Before the first play: wait (bounded) for `run`'s first registration attempt."""
        if self._registration is not None:
            await wait_event(self._first_attempt, REGISTER_TIMEOUT_S + SEAL_WAIT_S)

    async def settle_registration(self) -> None:
        """At shutdown: no new key registration; one under way finishes (bounded)."""
        if self._registration is not None:
            await self._registration.settle()

    def _put_key(self, path: str, body: bytes) -> Awaitable[httpx.Response]:
        headers = {"Content-Type": "application/json"}
        return self._request("PUT", path, body, headers, timeout_s=REGISTER_TIMEOUT_S)

    async def _unsigned_waiting(self) -> bool:
        return self._unsaved_unsigned() > 0 or await self.journal.has_unsigned()

    # --- stream -------------------------------------------------------------

    async def _stream_round(self) -> None:
        self._stream_was_up = False
        ws = await self._connect()
        session = self._session = StreamSession(self, ws)
        try:
            await session.run()
        finally:
            self._stream_was_up = session.established
            self._session = None
            with contextlib.suppress(Exception):
                await ws.close()

    async def _connect(self) -> ClientConnection:
        cfg = self.config
        try:
            return await connect(
                cfg.stream_url,
                additional_headers={"Authorization": f"Bearer {cfg.token}"},
                open_timeout=cfg.connect_timeout_s,
                close_timeout=2,
                compression=None,
                max_size=4 * 1024 * 1024,
                ssl=self._tls if cfg.stream_url.startswith("wss:") else None,
            )
        except InvalidStatus as exc:
            raise _status_failure(exc) from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            reason = str(exc) or type(exc).__name__
            raise TransportDown(f"stream: cannot connect: {reason}") from None

    # --- HTTP ---------------------------------------------------------------

    async def _http_round(self) -> None:
        """Probe, then send batches until the stream is due for another try."""
        loop = asyncio.get_running_loop()
        stay = self.config.stream_retry_s if STREAM in self.config.transports else float("inf")
        deadline = loop.time() + stay
        await self._post_batch([])
        cursor = 0
        while (remaining := deadline - loop.time()) > 0:
            self.check_skew()
            self.ready.clear()
            cursor = look_back(self.journal, cursor)
            rows = await self.journal.pending(
                cursor, self._http_records, self.config.batch_bytes, self.until_ts()
            )
            if not rows:
                await wait_event(self.ready, min(remaining, IDLE_POLL_S))
            elif await self._post_batch(rows):
                cursor = rows[-1].seq

    async def _post_batch(self, rows: list[Pending]) -> bool:
        """POST one batch and apply its acks; False when it must be sent smaller."""
        body, headers = await self._batch_body(rows)
        sent = self.clock.monotonic()
        response = await self._request("POST", "/v1/impressions/batch", body, headers)
        if response.status_code == 413 and len(rows) > 1:
            self._http_records = max(1, len(rows) // 2)
            log.warning("batch too large for the service; sending %d at a time", self._http_records)
            return False
        classify(response, "batch upload")
        try:
            answer = ack_decoder.decode(response.content)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise TransportDown(f"batch upload: unreadable ack: {exc}") from None
        seqs = [r.seq for r in rows]
        await self.take_acks(answer.acks, seqs, answer.received_at, answer.skew_ms, sent, HTTP)
        return True

    async def _batch_body(self, rows: list[Pending]) -> tuple[bytes, dict[str, str]]:
        body = envelope(self.device_id, self.clock.now_ms(), rows, None)
        headers = {"Content-Type": "application/json"}
        if self.config.gzip and len(body) > 1024:
            if len(body) > GZIP_INLINE_BYTES:
                body = await run_blocking(gzip.compress, body, 1)
            else:
                body = gzip.compress(body, 1)
            headers["Content-Encoding"] = "gzip"
        return body, headers

    async def _request(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        timeout_s: float | None = None,
    ) -> httpx.Response:
        assert self._http is not None, "the uplink is not running"
        if self.offline:
            raise TransportDown(f"http: {path}: network cut (simulated offline)")
        limit: Any = httpx.USE_CLIENT_DEFAULT if timeout_s is None else timeout_s
        try:
            return await self._http.request(
                method, path, content=body, headers=headers, timeout=limit
            )
        except httpx.HTTPError as exc:
            raise TransportDown(f"http: {path}: {str(exc) or type(exc).__name__}") from None

    # --- status -------------------------------------------------------------

    async def _status_forever(self) -> None:
        while True:
            await wait_event(self._status_due, self.config.status_interval_s)
            self._status_due.clear()
            try:
                await self.send_status()
            except DeviceError as exc:
                log.debug("status not sent: %s", exc)
            await asyncio.sleep(STATUS_MIN_GAP_S)

    async def send_status(self) -> None:
        """Send a status message now: a stream frame, or HTTP when evictions need a receipt."""
        status, ranges = await self.status()
        body = encode(status)
        session = self._session
        if session is not None and not ranges:
            await session.send_status(body)
            return
        response = await self._request(
            "POST", "/v1/devices/status", body, {"Content-Type": "application/json"}
        )
        classify(response, "status")
        if ranges:
            await self.journal.evictions_reported(ranges)
            log.info("reported %d evicted record(s) to the service", sum(r.size for r in ranges))

    async def status(self) -> tuple[dict[str, Any], tuple[EvictedRange, ...]]:
        """The status message as it would be sent now, and the eviction ranges it reports."""
        stats = await self.journal.stats()
        stamp = self.clock.stamp()
        ranges = stats.unreported
        base = Status(
            device_id=self.device_id,
            journal_id=self.journal.journal_id,
            sent_at=stamp.ts_ms,
            queue_depth=stats.queue_depth,
            oldest_queued_ts=stats.oldest_queued_ts,
            clock_offset_ms=stamp.offset_ms,
            drift_ppm=self.clock.drift_ppm,
            last_sync_ts=self.clock.last_sync_ts,
            evicted=sum(r.size for r in ranges),
            evicted_ranges=[(r.first, r.last) for r in ranges],
            version=self.config.version,
            **self.health(),
        )
        stale = await self.journal.count_older_than(stamp.ts_ms - self.policy.offline_limit_ms)
        extra = {
            "transport": self.state,
            "last_error": self.last_error,
            "clock_synced": stamp.synced,
            "clock_source": self.clock.source,
            "clock_steps": self.clock.steps,
            "clock_error": self.clock.last_error,
            "open_plays": stats.open_plays,
            "evicted_total": stats.evicted_total,
            "stale_queued": stale,
            "rejected": dict(self.rejected),
            "screenshots_pending": len(self.shots.pending()) if self.shots else 0,
            "journal_reset": self.journal.reset_reason,
        }
        return {**msgspec.to_builtins(base), **extra}, ranges

    def health(self) -> dict[str, Any]:
        """The device key's state and alarm, and the panel's last state (status fields)."""
        return device_health(self.key, self.panel)

    # --- screenshots --------------------------------------------------------

    async def _screenshots_forever(self) -> None:
        if self.shots is None:
            return
        while True:
            await wait_event(self._shots_due, SCREENSHOT_RETRY_S)
            self._shots_due.clear()
            if self.state not in (STREAM, HTTP):
                continue
            for sha in self.shots.pending():
                if not await self._upload(sha):
                    break

    async def _upload(self, sha: str) -> bool:
        """PUT one screenshot; False when the service is not taking any now."""
        assert self.shots is not None
        data = await self.shots.read(sha)
        if data is None:
            return True
        path = f"/v1/screenshots/{sha}"
        try:
            response = await self._request("PUT", path, data, {"Content-Type": "image/png"})
            classify(response, f"screenshot {sha[:12]}")
        except Refused as exc:
            log.warning("%s; not sent again", exc)
        except DeviceError as exc:
            log.debug("screenshot upload deferred: %s", exc)
            return False
        await self.shots.mark_uploaded(sha)
        return True

    # --- shutdown -----------------------------------------------------------

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every sealed record is acked, at most `timeout_s`; whether it was."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self.retry_now()
        while True:
            self._acked.clear()
            if (await self.journal.stats()).queue_depth == 0:
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await wait_event(self._acked, remaining)


def device_health(key: DeviceKey | None, panel: PanelMonitor | None) -> dict[str, Any]:
    """Key and panel fields of device health (`Status`), for a device with or without uplink."""
    health: dict[str, Any] = key.health() if key is not None else {"key_state": "disabled"}
    health["panel_source"] = panel.name if panel is not None else "none"
    health["panel_state"] = panel.last_state if panel is not None else None
    return health


def _status_failure(exc: InvalidStatus) -> DeviceError:
    """An upgrade answered by a status: the stream cannot be had now, HTTP may.

    The service tells bad credentials by closing an accepted upgrade (4401, 4403;
    PROTOCOL.md section 3); a 401 or 403 instead of the upgrade is a proxy or a
    firewall that refuses WebSockets, and the HTTP probe says whether the token is
    good. So no answer here is taken for bad credentials.
    """
    code = exc.response.status_code
    message = f"stream: HTTP {code} instead of a WebSocket upgrade"
    if code in (429, 503):
        return RetryLater(message, _header_seconds(exc.response.headers.get("Retry-After")))
    return TransportDown(message)


def _header_seconds(value: str | None) -> float:
    """A Retry-After of whole seconds, 0 when absent or not a number."""
    return float(value) if value is not None and value.strip().isdigit() else 0.0
