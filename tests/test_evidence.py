"""The buyer's offline check (evidence.py) on lines and key logs built here, no service."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from playproof import evidence, keylog
from playproof.keylog import KeyEntry, KeyLog
from playproof.protocol import Record, seal
from playproof.signing import KeyPair, sign
from tests.support import record_fields

T0 = 1_795_481_400_000
KEYS = KeyPair.generate()


def log_of(*events: tuple[int, str, str, KeyPair | None]) -> KeyLog:
    entries: list[KeyEntry] = []
    for at, event, device, keys in events:
        entries.append(
            keylog.append(
                entries[-1] if entries else None,
                at,
                event,  # type: ignore[arg-type]
                device,
                "device" if event == "registered" else "ops",
                keys.key_id if keys else None,
                keys.public.hex() if keys else None,
            )
        )
    return KeyLog(entries, keylog.head_of(entries))


def line(record: Record, received_at: int) -> bytes:
    doc: dict[str, Any] = {
        "record": json.loads(msgspec.json.encode(record)),
        "received_at": received_at,
        "status": "valid",
        "verification": None,
    }
    return json.dumps(doc).encode()


def signed(seq: int, keys: KeyPair = KEYS, device: str = "scr-1") -> Record:
    record = Record(**record_fields(device_id=device, seq=seq, end_ts=T0))
    record.panel_state, record.panel_source = "on", "cec"
    return sign(record, keys)


def unsigned(seq: int, device: str = "scr-1") -> Record:
    return seal(Record(**record_fields(device_id=device, seq=seq, end_ts=T0)))


LOG = log_of((T0, "registered", "scr-1", KEYS), (T0 + 100, "revoked", "scr-1", KEYS))


def outcomes(lines: list[bytes], log: KeyLog = LOG) -> list[tuple[str, str]]:
    keys = evidence.Keys(log)
    return [evidence.check_line(x, keys)[:2] for x in lines]


def test_a_record_received_inside_its_keys_window_is_good_and_outside_it_bad() -> None:
    assert outcomes([line(signed(1), T0), line(signed(2), T0 + 99)]) == [
        ("scr-1", "good"),
        ("scr-1", "good"),
    ]
    # Received at the revocation, or before the registration: the service refused those.
    assert outcomes([line(signed(3), T0 + 100), line(signed(4), T0 - 1)]) == [
        ("scr-1", "bad"),
        ("scr-1", "bad"),
    ]


def test_a_key_the_log_never_registered_for_that_device_is_unknown() -> None:
    other = KeyPair.generate()
    found = outcomes([line(signed(1, other), T0), line(signed(1, KEYS, "scr-2"), T0)])
    assert found == [("scr-1", "unknown_key"), ("scr-2", "unknown_key")]


def test_version_1_is_unsigned_before_the_device_signs_and_bad_after() -> None:
    assert outcomes([line(unsigned(1), T0 - 1), line(unsigned(2), T0)]) == [
        ("scr-1", "unsigned"),
        ("scr-1", "bad"),
    ]
    required = log_of((T0, "signatures_required", "scr-9", None))
    assert outcomes([line(unsigned(1, "scr-9"), T0 + 1)], required) == [("scr-9", "bad")]


def test_a_line_that_is_not_evidence_is_bad_and_the_report_fails() -> None:
    report = evidence.verify([b"{not json", b"", line(signed(1), T0)], LOG)
    assert not report.ok and not report.chain
    assert dict(report.counts["?"]) == {"bad": 1} and dict(report.counts["scr-1"]) == {"good": 1}
    assert [n for n, _ in report.failures] == [1]


def test_a_broken_chain_fails_the_report_even_when_every_record_is_good() -> None:
    entries = list(LOG.entries)
    entries[1] = msgspec.structs.replace(entries[1], at=T0 + 1000)  # revoked later: no!
    report = evidence.verify([line(signed(1), T0)], KeyLog(entries, LOG.head))
    assert not report.ok and "entry 2" in report.chain


def test_a_page_of_the_log_is_not_the_log() -> None:
    paged = KeyLog(LOG.entries, LOG.head, next_after=2)
    assert "one page" in evidence.chain_problem(paged)
