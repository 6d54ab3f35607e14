"""The device key: its file, its registration with a real service, and what gets sealed.

Everything here is real: key files on disk, SQLite journals, and `playproof serve`
in its own process; the operator's side (closing self-enrolment, adding keys) goes
through the `playproof devices keys` commands in their own processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from msgspec import UNSET

from playproof.device import Device
from playproof.device.keys import (
    ACK_FILE,
    ACKNOWLEDGED,
    KEY_FILE,
    REFUSED,
    TOO_MANY_KEYS,
    save_acknowledged,
)
from playproof.errors import DeviceError
from playproof.protocol import Record, checksum_ok
from playproof.signing import KeyPair, signature_error
from tests.device.helpers import Service, content, device_config, eventually, query
from tests.support import provision


def keys_cli(db_url: str, *args: str) -> str:
    """`playproof devices keys ...` in its own process; its stdout."""
    cmd = [sys.executable, "-m", "playproof", "devices", "keys", *args, "--db", db_url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def record(device: Device, count: int) -> list[Record]:
    """`count` short plays, each ended at once; their sealed records."""
    records = []
    for _ in range(count):
        play = await device.start(content(expected_ms=100))
        records.append(await play.end())
    return records


async def drained(device: Device) -> None:
    async def empty() -> bool:
        return (await device.journal.stats()).queue_depth == 0

    await eventually(empty, 30.0, "the journal to drain")


async def key_state(device: Device, state: str) -> None:
    async def reached() -> bool:
        return device.health()["key_state"] == state

    await eventually(reached, 30.0, f"key state {state}")


def stored(db_url: str, device_id: str = "scr-1") -> dict[int, tuple[str | None, str]]:
    """seq -> (key_id, checksum) of the device's impressions as the service stored them."""
    rows = query(
        db_url, "SELECT seq, key_id, checksum FROM impressions WHERE device_id = ?", device_id
    )
    return {seq: (key_id, checksum) for seq, key_id, checksum in rows}


def rejected(db_url: str) -> list[tuple[object, ...]]:
    return query(db_url, "SELECT reason FROM rejects")


@pytest.fixture
async def offline(data_dir: Path) -> AsyncIterator[Device]:
    """A device that records without delivering."""
    device = await Device.open(device_config(data_dir), capture=None)
    yield device
    await device.close(flush_timeout_s=0)


# --- the key file ------------------------------------------------------------


async def test_key_file_is_made_with_the_journal_readable_by_its_user_only(
    offline: Device, data_dir: Path
) -> None:
    path = data_dir / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    seed = path.read_bytes()
    assert len(seed) == 32
    assert KeyPair.from_seed(seed).key_id == offline.health()["key_id"]
    assert offline.health()["key_state"] == "unregistered"


async def test_key_file_readable_by_others_is_refused_with_the_fix(data_dir: Path) -> None:
    device = await Device.open(device_config(data_dir), capture=None)
    await device.close(flush_timeout_s=0)
    os.chmod(data_dir / KEY_FILE, 0o644)
    with pytest.raises(DeviceError, match=r"0644.*chmod 600"):
        await Device.open(device_config(data_dir), capture=None)


async def test_the_same_key_is_used_across_restarts(data_dir: Path) -> None:
    first = await Device.open(device_config(data_dir), capture=None)
    key_id = first.health()["key_id"]
    await first.close(flush_timeout_s=0)
    again = await Device.open(device_config(data_dir), capture=None)
    try:
        assert again.health()["key_id"] == key_id
    finally:
        await again.close(flush_timeout_s=0)


async def test_journal_restored_without_its_key_makes_a_new_key_and_says_so(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = await Device.open(device_config(data_dir), capture=None)
    old_id = first.health()["key_id"]
    await first.close(flush_timeout_s=0)
    save_acknowledged(data_dir, old_id)
    (data_dir / KEY_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="playproof.device.keys"):
        device = await Device.open(device_config(data_dir), capture=None)
    try:
        new_id = device.health()["key_id"]
        assert new_id != old_id
        # The old key's acknowledgement does not carry over to the new key.
        assert device.health()["key_state"] == "unregistered"
        warned = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert any("without its key" in r.getMessage() and new_id in r.getMessage() for r in warned)
        assert (await record(device, 1))[0].v == 1
    finally:
        await device.close(flush_timeout_s=0)


# --- what is sealed ------------------------------------------------------------


async def test_plays_are_sealed_version_1_while_the_key_is_not_acknowledged(
    offline: Device,
) -> None:
    (rec,) = await record(offline, 1)
    assert rec.v == 1 and checksum_ok(rec)
    assert [rec.key_id, rec.sig, rec.panel_state, rec.panel_source] == [UNSET] * 4


async def test_plays_are_signed_version_2_with_an_acknowledged_key(data_dir: Path) -> None:
    device = await Device.open(device_config(data_dir), capture=None)
    keys = device.key
    assert keys is not None
    await device.close(flush_timeout_s=0)
    save_acknowledged(data_dir, keys.key_id)
    device = await Device.open(device_config(data_dir), capture=None)
    try:
        (rec,) = await record(device, 1)
        assert rec.v == 2 and rec.key_id == keys.key_id
        assert (rec.panel_source, rec.panel_state) == ("none", "unknown")
        assert checksum_ok(rec)
        assert signature_error(rec, keys.keys.public) == ""
    finally:
        await device.close(flush_timeout_s=0)


async def test_a_play_left_open_by_a_crash_is_sealed_by_the_same_rule(data_dir: Path) -> None:
    device = await Device.open(device_config(data_dir), capture=None)
    await device.start(content(expected_ms=60_000))
    await device.abandon()
    unsigned = await Device.open(device_config(data_dir), capture=None)
    (first,) = unsigned.recovered
    assert first.v == 1 and first.end_reason == "device_restart" and checksum_ok(first)
    key = unsigned.key
    assert key is not None
    await unsigned.start(content(expected_ms=60_000))
    await unsigned.abandon()
    save_acknowledged(data_dir, key.key_id)
    signed = await Device.open(device_config(data_dir), capture=None)
    try:
        (second,) = signed.recovered
        assert second.v == 2 and second.end_reason == "device_restart"
        # Its end was never observed: at best unknown.
        assert second.panel_state == "unknown"
        assert signature_error(second, key.keys.public) == ""
    finally:
        await signed.close(flush_timeout_s=0)


# --- registration against the real service -------------------------------------


async def test_key_registers_once_online_and_plays_turn_version_2_all_accepted(
    data_dir: Path, service: Service
) -> None:
    token = provision(service.db_url, "scr-1")
    # Offline first: version-1 records wait in the journal.
    offline = await Device.open(device_config(data_dir), capture=None)
    early = await record(offline, 3)
    await offline.close(flush_timeout_s=0)

    device = await Device.open(device_config(data_dir, service.url, token), capture=None)
    try:
        # Plays go on while the device connects, delivers and registers.
        during: list[Record] = []
        while device.health()["key_state"] != ACKNOWLEDGED:
            during += await record(device, 1)
            await asyncio.sleep(0.02)
            assert len(during) < 2000, "the key was never acknowledged"
        late = await record(device, 3)
        await drained(device)
    finally:
        await device.close(flush_timeout_s=1)

    assert rejected(service.db_url) == []
    assert device.uplink is not None and not device.uplink.rejected
    everything = early + during + late
    rows = stored(service.db_url)
    assert sorted(rows) == [r.seq for r in everything], "every play arrived, once"
    # Never sealed twice: what arrived is what was sealed, version 1 before version 2.
    for rec in everything:
        assert rows[rec.seq] == (rec.key_id if rec.v == 2 else None, rec.checksum)
    versions = [r.v for r in everything]
    assert versions[:3] == [1, 1, 1] and versions[-3:] == [2, 2, 2]
    assert versions == sorted(versions), "no version-1 record after the first version-2 one"
    assert (data_dir / ACK_FILE).read_text().strip() == device.health()["key_id"]


async def test_closed_self_enrolment_is_an_alarm_then_the_key_registers_once_reopened(
    data_dir: Path, service: Service
) -> None:
    token = provision(service.db_url, "scr-1")
    keys_cli(service.db_url, "lock", "scr-1")
    config = device_config(data_dir, service.url, token, key_retry_s=0.3)
    device = await Device.open(config, capture=None)
    try:
        await key_state(device, REFUSED)
        health = device.health()
        assert "403" in health["key_alarm"]
        status = await device.status()
        assert status["key_state"] == REFUSED and "403" in status["key_alarm"]
        # No crash: the device records and delivers version 1 meanwhile.
        refused = await record(device, 2)
        assert [r.v for r in refused] == [1, 1]
        await drained(device)
        keys_cli(service.db_url, "lock", "scr-1", "--open")
        await key_state(device, ACKNOWLEDGED)
        assert device.health()["key_alarm"] is None
        (signed,) = await record(device, 1)
        assert signed.v == 2
        await drained(device)
    finally:
        await device.close(flush_timeout_s=1)
    assert rejected(service.db_url) == []
    assert stored(service.db_url)[signed.seq][0] == signed.key_id


async def test_too_many_keys_is_an_alarm_and_plays_stay_version_1_and_accepted(
    data_dir: Path, service: Service
) -> None:
    token = provision(service.db_url, "scr-1")
    for _ in range(4):  # the default limit of active keys per device
        keys_cli(service.db_url, "add", "scr-1", KeyPair.generate().public.hex())
    # The operator's keys exist: this device's version-1 records are refused from now
    # on (PROTOCOL.md section 7), so they are only recorded here, not checked in.
    config = device_config(data_dir, service.url, token, key_retry_s=0.3)
    device = await Device.open(config, capture=None)
    try:
        await key_state(device, TOO_MANY_KEYS)
        assert "409" in device.health()["key_alarm"]
        status = await device.status()
        assert status["key_state"] == TOO_MANY_KEYS
        assert [r.v for r in await record(device, 2)] == [1, 1]
        # Still alive, still trying (rarely), still in alarm.
        await asyncio.sleep(0.5)
        assert device.health()["key_state"] == TOO_MANY_KEYS
    finally:
        await device.close(flush_timeout_s=0)


async def test_a_play_ending_while_the_registration_is_in_flight_waits_for_its_answer(
    offline: Device,
) -> None:
    key = offline.key
    assert key is not None
    play = await offline.start(content(expected_ms=100))
    await key.gate.hold()  # what the registrar does around its PUT
    ending = asyncio.create_task(play.end())
    await asyncio.sleep(0.1)
    assert not ending.done(), "sealed while the registration's outcome was unknown"
    assert (await offline.journal.stats()).open_plays == 1
    key.acknowledged = True  # the answer: 201
    key.gate.release()
    sealed = await ending
    assert sealed.v == 2 and signature_error(sealed, key.keys.public) == ""
