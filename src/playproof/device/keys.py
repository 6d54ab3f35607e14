"""The device's signing key (PROTOCOL.md section 7): its file, its registration, sealing.

- **The key file** `<data>/device.key` holds the 32-byte Ed25519 seed, readable by
  the player's user only: created with `O_CREAT|O_EXCL` and mode 0600, written and
  fsynced under a temporary name, then renamed into place (a crash leaves the old
  state or the whole new file, never half a key). A key file that group or others
  can read is refused: the key proves who sealed a play, and a copy proves nothing.
- **Registration state** `<data>/device.key.ack` holds the key id the service
  acknowledged (201 or 200), written the same atomic way. A journal restored without
  its key gets a new key (logged at WARNING) and registers it again.
- **Sealing**: version 2 (signed, with the panel's state) only with an acknowledged
  key, version 1 until then; a sealed record is never sealed again.
- **The registration race.** Once a device has a registered key the service rejects
  its version-1 records as `bad_signature`; a version-1 record sealed but not yet
  delivered when the key is registered would be lost. So the `Registrar` registers
  only when the journal holds no undelivered version-1 record, and while its PUT is in
  flight it holds sealing (`SealGate`): a play that ends then waits (at most
  `SEAL_WAIT_S`) until the answer says which version to seal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import httpx
from msgspec import UNSET

from playproof.device.backoff import Backoff, wait_event
from playproof.device.blocking import run_blocking
from playproof.device.diskspace import prepare_folder
from playproof.device.journal import seal_v1
from playproof.device.panel import worst
from playproof.device.transport import RetryLater, TransportDown
from playproof.errors import DeviceError, KeyRefused
from playproof.protocol import PanelSource, Record
from playproof.signing import KeyPair, sign

log = logging.getLogger(__name__)

KEY_FILE: Final = "device.key"
ACK_FILE: Final = "device.key.ack"
SEED_BYTES: Final = 32
# How long a play's end waits for a registration's answer before sealing version 1.
SEAL_WAIT_S: Final = 2.0
# The PUT's own limit: below SEAL_WAIT_S, so that its answer normally comes in time.
REGISTER_TIMEOUT_S: Final = 1.5
# How often the registrar looks again while it waits (online, version-1 records queued).
POLL_S: Final = 1.0
# How long the registrar waits for a moment when no open play is due to end within
# SEAL_WAIT_S before it registers anyway (such plays' ends then wait on the gate).
QUIET_WAIT_S: Final = 30.0
ALARM_MAX_CHARS: Final = 500

# Registration states, as device health reports them.
UNREGISTERED: Final = "unregistered"  # not yet asked (offline, or version-1 records queued)
REGISTERING: Final = "registering"  # the PUT is in flight
ACKNOWLEDGED: Final = "acknowledged"  # 201/200: plays are sealed version 2
REFUSED: Final = "refused"  # 403: self-enrolment closed for this device (alarm)
TOO_MANY_KEYS: Final = "too_many_keys"  # 409 (alarm)
BAD_KEY: Final = "bad_key"  # 400 (alarm)
UNSUPPORTED: Final = "unsupported"  # 404/405: a service without key registration (alarm)
UNANSWERED: Final = "unanswered"  # the PUT's answer was lost (timeout, network)
DISABLED: Final = "disabled"  # signing off (DeviceConfig.signing=False)
ALARM_STATES: Final = frozenset({REFUSED, TOO_MANY_KEYS, BAD_KEY, UNSUPPORTED})


# --- files -----------------------------------------------------------------


def _write_atomic(folder: Path, name: str, data: bytes) -> None:
    """`folder/name` holds `data` whole or not at all, mode 0600, on disk when this returns."""
    tmp = folder / f".{name}.tmp-{secrets.token_hex(4)}"
    # O_EXCL: never write through a file (or link) someone else put there.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, folder / name)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    # The rename is durable only once the folder itself is synced.
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_private(path: Path) -> bytes:
    """The file's bytes, refused when group or others may read or write it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        mode = os.fstat(fd).st_mode & 0o777
        if mode & 0o077:
            raise DeviceError(
                f"key file {path} has mode {mode:04o}: group or others may read it, so it "
                f"proves nothing; expected 0600 (chmod 600 {path}, or delete it to make a "
                "new key, which must then be registered again)"
            )
        return os.read(fd, SEED_BYTES + 1)
    finally:
        os.close(fd)


def load_keys(data_dir: Path, journal_existed: bool) -> KeyPair:
    """The device's key pair from `data_dir`, made (and saved) when there is none.

    `journal_existed`: whether a journal was already there. A journal without its key
    (restored from a backup, copied, or made before signing) gets a new key, and the
    log says so: plays are sealed version 1 until the new key is registered.
    """
    folder = prepare_folder(data_dir)
    path = folder / KEY_FILE
    try:
        seed = _read_private(path)
    except FileNotFoundError:
        keys = KeyPair.generate()
        try:
            _write_atomic(folder, KEY_FILE, keys.seed)
        except OSError as exc:
            raise DeviceError(f"cannot write key file {path}: {exc.strerror}") from None
        if journal_existed:
            log.warning(
                "the journal in %s has no key file beside it (restored without its key?): "
                "made a new key %s; plays are sealed version 1 until it is registered",
                folder,
                keys.key_id,
            )
        else:
            log.info("made device key %s in %s", keys.key_id, path)
        return keys
    except OSError as exc:
        raise DeviceError(f"cannot read key file {path}: {exc.strerror}") from None
    try:
        return KeyPair.from_seed(seed)
    except KeyRefused as exc:
        raise DeviceError(f"key file {path} is not a key: {exc}") from None


def read_acknowledged(data_dir: Path) -> str | None:
    """The key id the service acknowledged, as saved in `data_dir` (None when none)."""
    try:
        text = (data_dir / ACK_FILE).read_text(encoding="ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    except OSError as exc:
        raise DeviceError(f"cannot read {data_dir / ACK_FILE}: {exc.strerror}") from None
    return text or None


def save_acknowledged(data_dir: Path, key_id: str) -> None:
    """Remember, durably, that the service acknowledged `key_id`."""
    _write_atomic(data_dir, ACK_FILE, f"{key_id}\n".encode("ascii"))


# --- sealing -----------------------------------------------------------------


class SealGate:
    """Holds sealing while a key registration's answer is awaited.

    `sealing()` wraps one seal-and-store; `hold()` waits for those under way to finish
    and makes new ones wait (at most `SEAL_WAIT_S` each) until `release()`.
    """

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = 0

    @contextlib.asynccontextmanager
    async def sealing(self, max_wait_s: float = SEAL_WAIT_S) -> AsyncIterator[None]:
        """One seal-and-store, after any registration under way (bounded wait)."""
        if not self._open.is_set() and not await wait_event(self._open, max_wait_s):
            log.warning(
                "sealing a play without the key registration's answer (waited %.1f s)",
                max_wait_s,
            )
        self._busy += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._busy -= 1
            if self._busy == 0:
                self._idle.set()

    async def hold(self) -> None:
        """Stop new seals, and wait until none is under way."""
        self._open.clear()
        await self._idle.wait()

    def release(self) -> None:
        """Let seals go on."""
        self._open.set()

    @property
    def held(self) -> bool:
        """Whether sealing is held now."""
        return not self._open.is_set()


class DeviceKey:
    """The device's key and what the service has said about it."""

    def __init__(
        self, keys: KeyPair, data_dir: Path, acknowledged_id: str | None, panel_source: PanelSource
    ) -> None:
        self.keys = keys
        self.data_dir = data_dir
        self.panel_source: PanelSource = panel_source
        self.acknowledged = acknowledged_id == keys.key_id
        self.state = ACKNOWLEDGED if self.acknowledged else UNREGISTERED
        self.alarm: str | None = None
        self.gate = SealGate()

    @classmethod
    async def open(
        cls, data_dir: Path, journal_existed: bool, panel_source: PanelSource = "none"
    ) -> DeviceKey:
        """Load (or make) the key in `data_dir` with its saved registration state."""

        def load() -> DeviceKey:
            keys = load_keys(data_dir, journal_existed)
            return cls(keys, data_dir, read_acknowledged(data_dir), panel_source)

        return await run_blocking(load)

    @property
    def key_id(self) -> str:
        """The key's id (first 16 hex digits of SHA-256 of the public key)."""
        return self.keys.key_id

    def seal(self, record: Record) -> Record:
        """Seal version 2 with an acknowledged key, else version 1; return the record.

        The record's `panel_state` is the worst state observed (UNSET: none observed).
        """
        if not self.acknowledged:
            return seal_v1(record)
        if record.panel_state is UNSET:
            record.panel_state = "unknown"
        if record.panel_source is UNSET:
            record.panel_source = self.panel_source
        return sign(record, self.keys)

    def seal_recovered(self, record: Record) -> Record:
        """Seal a play a crash left open: its end was not observed, so at best `unknown`."""
        observed = record.panel_state
        record.panel_state = worst(["unknown"] if observed is UNSET else [observed, "unknown"])
        return self.seal(record)

    def set_state(self, state: str, alarm: str | None = None) -> None:
        """Note the registration state; a new alarm is logged at ERROR, once."""
        if alarm is not None:
            alarm = alarm[:ALARM_MAX_CHARS]
            if alarm != self.alarm:
                log.error("device key %s: %s", self.key_id, alarm)
        self.state, self.alarm = state, alarm

    def health(self) -> dict[str, Any]:
        """What device health shows of the key."""
        return {"key_id": self.key_id, "key_state": self.state, "key_alarm": self.alarm}


# --- registration ------------------------------------------------------------

Put = Callable[[str, bytes], Awaitable[httpx.Response]]


class Registrar:
    """Registers the device key once it is online and no version-1 record waits.

    `put(path, body)` sends the request (raising TransportDown/RetryLater when it
    gets no answer); `online()` says whether a transport is up; `unsigned()` says
    whether a version-1 record is sealed and not yet delivered; `delivered` is set by each ack.
    """

    def __init__(
        self,
        key: DeviceKey,
        *,
        put: Put,
        online: Callable[[], bool],
        unsigned: Callable[[], Awaitable[bool]],
        soonest_end: Callable[[], float | None] = lambda: None,
        delivered: asyncio.Event,
        on_change: Callable[[], None],
        backoff: Backoff,
        rare_retry_s: float,
        rng: random.Random,
    ) -> None:
        self.key = key
        self._put = put
        self._online = online
        self._unsigned = unsigned
        self._soonest_end = soonest_end
        self._quiet_since: float | None = None
        # The PUT and the handling of its answer, apart from `run`: cancelling the
        # registrar (a shutdown) must not lose an answer the service has given.
        self._inflight: asyncio.Task[float] | None = None
        self._stopped = False
        self._delivered = delivered
        self._on_change = on_change
        self._backoff = backoff
        self._rare_retry_s = rare_retry_s
        self._rng = rng

    async def run(self) -> None:
        """Try until the key is acknowledged (or `settle` stops it)."""
        while not self.key.acknowledged and not self._stopped:
            delay = await self.attempt()
            if delay > 0:
                await asyncio.sleep(delay)

    async def attempt(self) -> float:
        """One look (and a PUT when the time is right); the delay before the next."""
        if not self._online() or await self._unsigned() or self._playing():
            # Deliver the version-1 records first: once the key is registered the
            # service would reject them as bad_signature.
            self._delivered.clear()
            await wait_event(self._delivered, POLL_S)
            return 0.0
        return await self._hold_and_register()

    async def first(self) -> None:
        """At the device's start, before its first play: register at once unless a
        version-1 record waits (a fresh journal's key is then acknowledged before it
        seals anything, so that all its plays are signed). Bounded by the PUT's timeout;
        whatever the answer, `run` carries on from it."""
        if self.key.acknowledged or self._stopped or await self._unsigned():
            return
        await self._hold_and_register()

    async def _hold_and_register(self) -> float:
        gate = self.key.gate
        await gate.hold()
        try:
            # A play may have been sealed between the look and the hold.
            if await self._unsigned():
                return 0.0
            if self._stopped:
                return 0.0
            before = self.key.state
            if self.key.alarm is None:
                # A retry under an alarm keeps showing the alarm's state: health would
                # otherwise flicker to `registering` every few minutes.
                self.key.set_state(REGISTERING)
            self._inflight = asyncio.create_task(self._register())
            try:
                return await asyncio.shield(self._inflight)
            finally:
                if self.key.state != before:
                    self._on_change()
        finally:
            gate.release()

    async def settle(self, timeout_s: float = SEAL_WAIT_S + REGISTER_TIMEOUT_S) -> None:
        """Start no more registrations; let one under way finish and save its answer.

        A shutdown that dropped the PUT after the service registered the key, but before
        the answer was saved, would leave the next start sealing version 1, which the
        service then rejects.
        """
        self._stopped = True
        task = self._inflight
        if task is not None and not task.done():
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), timeout_s)

    def _playing(self) -> bool:
        """Whether to wait for a moment when no open play is due to end soon.

        Then no play normally ends while the PUT is in flight, and the gate's bounded
        wait is only for plays cut short; a screen whose plays are all shorter than
        SEAL_WAIT_S registers anyway after QUIET_WAIT_S, its plays' ends on the gate.
        """
        soonest = self._soonest_end()
        if soonest is None or soonest > SEAL_WAIT_S:
            return False
        now = asyncio.get_running_loop().time()
        if self._quiet_since is None:
            self._quiet_since = now
        return now - self._quiet_since < QUIET_WAIT_S

    async def _register(self) -> float:
        key = self.key
        body = b'{"public_key":"%s"}' % key.keys.public.hex().encode()
        try:
            response = await self._put(f"/v1/devices/keys/{key.key_id}", body)
        except (TransportDown, RetryLater) as exc:
            # Maybe registered, maybe not: ask again soon (a second PUT answers 200).
            key.set_state(UNANSWERED, key.alarm)
            log.warning("device key %s: registration got no answer: %s", key.key_id, exc)
            after = exc.after_s if isinstance(exc, RetryLater) else 0.0
            return self._backoff.next_delay(after)
        return await self._answer(response)

    async def _answer(self, response: httpx.Response) -> float:
        key, code = self.key, response.status_code
        if code in (200, 201):
            # In memory first: the service now refuses version 1 from this device.
            key.acknowledged = True
            key.set_state(ACKNOWLEDGED)
            self._backoff.reset()
            try:
                await run_blocking(save_acknowledged, key.data_dir, key.key_id)
            except OSError as exc:
                log.error(
                    "device key %s acknowledged, but the state could not be saved (%s): "
                    "the next start registers it again",
                    key.key_id,
                    exc,
                )
            log.info("device key %s registered (HTTP %d): sealing version 2", key.key_id, code)
            return 0.0
        detail = _detail(response)
        if code in (429, 503) or code >= 500:
            key.set_state(UNANSWERED, key.alarm)
            log.warning("device key %s: registration deferred: HTTP %d", key.key_id, code)
            return self._backoff.next_delay(_retry_after(response))
        state, what = {
            400: (BAD_KEY, "the service refused the key as malformed"),
            401: (REFUSED, "the device token was not accepted"),
            403: (REFUSED, "self-enrolment is closed for this device (an operator must add it)"),
            404: (UNSUPPORTED, "the service does not register keys"),
            405: (UNSUPPORTED, "the service does not register keys"),
            409: (TOO_MANY_KEYS, "the device holds the most keys it may (revoke one)"),
        }.get(code, (REFUSED, "the service refused the key"))
        key.set_state(
            state,
            f"key registration failed (HTTP {code}): {what}: {detail}; "
            "plays are sealed version 1 meanwhile",
        )
        return self._rare_retry_s * self._rng.uniform(0.5, 1.5)


def _detail(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    return str(error) if error else response.text[:200] or response.reason_phrase


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else 0.0
