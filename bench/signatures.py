"""The CPU cost of one Ed25519 verification of a protocol-v2 record, both libraries, one run.

    .venv/bin/python bench/signatures.py [--count 3000]

Verifies the first record of ../shared/protocol/vectors-v2.json `--count` times with
OpenSSL (`cryptography`) and with libsodium (PyNaCl, what the service uses through
`signing.signature_error`), and prints CPU µs per verification of each: the figures
behind BENCHMARKS.md's *Signed ingest*.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from playproof import protocol, signing

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "protocol" / "vectors-v2.json"


def cpu_us(count: int, check: Callable[[], object]) -> float:
    """CPU microseconds per call of `check`, over `count` calls."""
    started = time.process_time()
    for _ in range(count):
        check()
    return (time.process_time() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000)
    count = parser.parse_args().count
    vectors = json.loads(VECTORS.read_text())
    record = protocol.decode_record(json.dumps(vectors["vectors"][0]["record"]).encode())
    public = bytes.fromhex(vectors["public_key_hex"])
    message, sig = protocol.canonical_bytes(record), bytes.fromhex(str(record.sig))
    openssl = Ed25519PublicKey.from_public_bytes(public)
    sodium = signing.verify_key(public)
    assert signing.signature_error(record, sodium) == ""
    ssl_us = cpu_us(count, lambda: openssl.verify(sig, message))
    sodium_us = cpu_us(count, lambda: sodium.verify(message, sig))
    print(f"OpenSSL (cryptography) verify: {ssl_us:.1f} µs")
    print(f"libsodium (PyNaCl) verify:     {sodium_us:.1f} µs")
    whole = cpu_us(count, lambda: signing.signature_error(record, sodium))
    print(f"signing.signature_error (libsodium, with the record's canonical copy): {whole:.1f} µs")


if __name__ == "__main__":
    main()
