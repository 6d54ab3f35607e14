"""The signature checker: PROTOCOL.md's refusals, and batches coalesced across the pool."""

from __future__ import annotations

import asyncio

from playproof.protocol import Record, seal
from playproof.rules import Verdict, reject
from playproof.server.signatures import SignatureChecker, judge_signature, refusal
from playproof.signing import KeyPair, sign
from playproof.stores.base import BatchWrite, DeviceInfo, DeviceKey, Judged
from tests.support import record_fields

T0 = 1_795_481_420_000
KEYS = KeyPair.generate()
ACCEPTED = Verdict(None, "valid", 100)


def device(*keys: DeviceKey, required: bool = False) -> DeviceInfo:
    return DeviceInfo("scr-1", "store-1", 0, None, keys, True, required or bool(keys))


def key(keys: KeyPair = KEYS, revoked_at: int | None = None) -> DeviceKey:
    return DeviceKey("scr-1", keys.key_id, keys.public.hex(), T0 - 1000, "device", revoked_at)


def signed(seq: int, keys: KeyPair = KEYS) -> Record:
    record = Record(**record_fields(seq=seq, end_ts=T0 - 1000))
    record.panel_state, record.panel_source = "on", "none"
    return sign(record, keys)


def unsigned(seq: int) -> Record:
    return seal(Record(**record_fields(seq=seq, end_ts=T0 - 1000)))


def test_version_1_needs_no_signature_only_from_a_device_that_need_not_sign() -> None:
    assert refusal(unsigned(1), device(), T0) == ""
    assert "since key" in str(refusal(unsigned(1), device(key()), T0))
    assert "operator requires" in str(refusal(unsigned(1), device(required=True), T0))


def test_a_key_verifies_only_records_received_while_it_is_active() -> None:
    assert refusal(signed(1), device(key()), T0) == key()
    assert "revoked at" in str(refusal(signed(1), device(key(revoked_at=T0)), T0))
    assert refusal(signed(1), device(key(revoked_at=T0 + 1)), T0) == key(revoked_at=T0 + 1)
    assert "after the record was received" in str(refusal(signed(1), device(key()), T0 - 1001))
    assert "unknown key" in str(refusal(signed(1, KeyPair.generate()), device(key()), T0))


def test_judging_a_signature_keeps_verdicts_decided_before_it_and_overrides_the_rest() -> None:
    forged = signed(1)
    forged.duration_ms += 1
    seal(forged)
    for before in (reject("bad_checksum"), reject("forbidden")):
        assert judge_signature(forged, before, device(key()), T0) == before
    for after in (ACCEPTED, reject("stale"), reject("invalid", "start after end")):
        got = judge_signature(forged, after, device(key()), T0)
        assert (got.reason, got.detail) == (
            "bad_signature",
            f"signature does not verify under key {KEYS.key_id}",
        )
    assert judge_signature(signed(2), ACCEPTED, device(key()), T0) == ACCEPTED


def test_concurrent_batches_share_pool_jobs_and_each_gets_its_own_answers() -> None:
    async def main() -> list[list[str | None]]:
        checker = SignatureChecker(workers=2)
        owner = device(key())
        writes = []
        for n in range(40):
            record = signed(n + 1)
            if n % 3 == 0:
                record.sig = "00" * 64
            writes.append(BatchWrite("scr-1", T0, T0, [Judged(record, ACCEPTED)]))
        try:
            done = await asyncio.gather(*(checker.apply(w, owner) for w in writes))
        finally:
            await checker.stop()
        return [[j.verdict.reason for j in w.judged] for w in done]

    answers = asyncio.run(main())
    assert answers == [["bad_signature"] if n % 3 == 0 else [None] for n in range(40)]


def test_a_device_that_need_not_sign_sending_version_1_never_starts_the_pool() -> None:
    async def main() -> bool:
        checker = SignatureChecker(workers=1)
        write = BatchWrite("scr-1", T0, T0, [Judged(unsigned(1), ACCEPTED)])
        same = await checker.apply(write, device())
        return same is write and not checker.started

    assert asyncio.run(main())


def test_a_large_batch_split_across_workers_keeps_each_records_answer_in_its_place() -> None:
    async def main() -> list[str | None]:
        checker = SignatureChecker(workers=2)
        records = [signed(n + 1) for n in range(300)]
        for record in records[::7]:
            record.sig = "00" * 64
        write = BatchWrite("scr-1", T0, T0, [Judged(r, ACCEPTED) for r in records])
        try:
            done = await checker.apply(write, device(key()))
        finally:
            await checker.stop()
        return [j.verdict.reason for j in done.judged]

    assert asyncio.run(main()) == ["bad_signature" if n % 7 == 0 else None for n in range(300)]
