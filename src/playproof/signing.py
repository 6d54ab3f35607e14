"""Ed25519 for protocol version 2 (PROTOCOL.md section 7): keys, key ids, signing, checking.

Pure (no I/O). `cryptography` (OpenSSL) makes keys and signs; PyNaCl (libsodium)
verifies, at half OpenSSL's cost. What they might not refuse, this module does:
public keys that are not a canonical encoding of a point of large order (under
the identity point one signature verifies every message, and OpenSSL accepts
that forgery), and signatures whose `S` is not below the group order `L`
(RFC 8032 section 5.1.7).
"""

from __future__ import annotations

import hashlib
from typing import Final, NamedTuple

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from msgspec import UNSET
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from playproof.errors import KeyRefused
from playproof.protocol import SIGNED_VERSION, Record, canonical_bytes, encode

# The field prime and the order of the prime-order subgroup (RFC 8032 section 5.1).
P: Final = 2**255 - 19
L: Final = 2**252 + 27742317777372353535851937790883648493
_D: Final = -121665 * pow(121666, P - 2, P) % P
_SQRT_M1: Final = pow(2, (P - 1) // 4, P)
_HEX64 = frozenset("0123456789abcdef")


def key_id_of(public_key: bytes) -> str:
    """The first 16 lowercase hex digits of SHA-256 of the raw 32-byte public key."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def _decode_point(raw: bytes) -> tuple[int, int] | None:
    """The point (x, y) a 32-byte encoding names, or None when it names none canonically."""
    y = int.from_bytes(raw, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None  # not canonical: y must be reduced
    u, v = (y * y - 1) % P, (_D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if v * x * x % P == (-u) % P:
        x = x * _SQRT_M1 % P
    elif v * x * x % P != u:
        return None  # not on the curve
    if x == 0 and sign:
        return None  # -0: not canonical
    if x & 1 != sign:
        x = P - x
    return x, y


def _add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    (x1, y1), (x2, y2) = a, b
    t = _D * x1 * x2 * y1 * y2 % P
    x3 = (x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P
    return x3, y3


def _small_order(point: tuple[int, int]) -> bool:
    """Whether 8·point is the identity: the eight points of order dividing 8."""
    for _ in range(3):
        point = _add(point, point)
    return point == (0, 1)


def check_public_key(public_key_hex: str, key_id: str | None = None) -> bytes:
    """The raw key if it may be registered, else KeyRefused saying why.

    It must be 64 lowercase hex digits, a canonical encoding of a curve point, of
    large order, and (when given) hash to `key_id`.
    """
    if len(public_key_hex) != 64 or not set(public_key_hex) <= _HEX64:
        raise KeyRefused(f"expected public_key of 64 lowercase hex digits, got {public_key_hex!r}")
    raw = bytes.fromhex(public_key_hex)
    if key_id is not None and key_id_of(raw) != key_id:
        raise KeyRefused(
            f"expected key_id {key_id_of(raw)} (SHA-256 of the public key), got {key_id!r}"
        )
    point = _decode_point(raw)
    if point is None:
        raise KeyRefused("expected a canonical encoding of an Ed25519 point, got one that is not")
    if _small_order(point):
        raise KeyRefused(
            "expected a public key of large order, got a small-order point "
            "(one signature would verify every message)"
        )
    return raw


class KeyPair(NamedTuple):
    """A device's signing key and what the service knows it by."""

    private: Ed25519PrivateKey
    public: bytes
    key_id: str

    @classmethod
    def generate(cls) -> KeyPair:
        """A new random key pair."""
        return cls.from_seed(Ed25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        """The key pair of a 32-byte private seed (RFC 8032's private key)."""
        if len(seed) != 32:
            raise KeyRefused(f"expected a 32-byte Ed25519 seed, got {len(seed)} bytes")
        private = Ed25519PrivateKey.from_private_bytes(seed)
        public = private.public_key().public_bytes_raw()
        return cls(private, public, key_id_of(public))

    @property
    def seed(self) -> bytes:
        """The 32-byte private seed (what a key file holds)."""
        return self.private.private_bytes_raw()


def sign(record: Record, keys: KeyPair) -> Record:
    """Seal `record` as version 2 with `keys`: key id, checksum and signature set.

    Its panel fields must already be set; returns the record.
    """
    record.v = SIGNED_VERSION
    record.key_id = keys.key_id
    message = canonical_bytes(record)
    record.checksum = hashlib.sha256(message).hexdigest()
    record.sig = keys.private.sign(message).hex()
    return record


def verify_key(public_key: bytes) -> VerifyKey:
    """A key object to check many signatures with (make it once per key)."""
    return VerifyKey(public_key)


def signature_error(record: Record, public_key: bytes | VerifyKey) -> str:
    """Why `record`'s signature does not hold under `public_key` ("" when it does).

    The caller has checked that `key_id` names this key for this device. The record
    is only read (its canonical bytes come from a copy), so a worker thread may check
    a record the event loop owns. Verification is libsodium's (PyNaCl): 63 µs here
    against OpenSSL's 117 µs, the largest cost of a signed record (BENCHMARKS.md);
    `S < L` is checked here all the same, whatever the library does.
    """
    if not isinstance(record.sig, str):
        return "expected a signature, got none"
    sig = bytes.fromhex(record.sig)
    if int.from_bytes(sig[32:], "little") >= L:
        return "signature not canonical: S is not below the group order L"
    key = public_key if isinstance(public_key, VerifyKey) else VerifyKey(public_key)
    message = encode(msgspec.structs.replace(record, checksum=UNSET, sig=UNSET))
    try:
        key.verify(message, sig)
    except BadSignatureError:
        return f"signature does not verify under key {record.key_id}"
    return ""
