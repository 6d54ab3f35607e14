"""Signed (protocol version 2) against unsigned ingest, for `bench/ingest.py --signed`.

Each signed device has a key of its own, registered in the store before the run, as
its first registration would be; its records are loadgen's, sealed as version 2 with
the panel seen `on`. They are made before a scenario's clock starts, like every
record loadgen sends, so the generator's signing is not measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import loadgen
from loadgen import Device
from playproof.protocol import decode_record, encode
from playproof.server import admin
from playproof.signing import KeyPair, sign


@dataclass
class SignedDevice(Device):
    """A device that seals version 2 with a key of its own, registered before the run."""

    keys: KeyPair = field(default_factory=KeyPair.generate)


_unsigned_record = loadgen.make_record


def make_any_record(device: Device, seq: int, end: int) -> bytes:
    """loadgen's record, signed when the device has a key (made before the clock starts,
    like every record loadgen sends: the generator's signing is not measured)."""
    raw = _unsigned_record(device, seq, end)
    if not isinstance(device, SignedDevice):
        return raw
    record = decode_record(raw)
    record.panel_state, record.panel_source = "on", "drm"
    return encode(sign(record, device.keys))


# loadgen builds its records by this name: signed devices get version 2 through it.
loadgen.make_record = make_any_record


async def provision_signed(db_url: str, ids: list[str]) -> list[Device]:
    """Register devices and a key for each, as its first registration would."""
    devices: list[Device] = []
    async with admin.opened(db_url) as store:
        for i in ids:
            device = SignedDevice(i, await admin.add_device(store, i, "store-1"))
            keys = device.keys
            at = loadgen.now_ms() - 1000
            await store.register_key(i, keys.key_id, keys.public.hex(), at, "device", False)
            devices.append(device)
    return devices
