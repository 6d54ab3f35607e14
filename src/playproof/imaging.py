"""Screenshot analysis: a perceptual hash and a blankness test, with Pillow and ImageHash.

A proof screenshot is compared with the content's reference images by the
Hamming distance of their perceptual hashes (DCT hash, greyscale), which
survives scaling, re-encoding and small colour shifts but not a different
picture. Large images are decoded downscaled: the hash looks at 32x32 pixels,
so decoding a 1920x1080 frame in full would be wasted work.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Sequence
from typing import Final, NamedTuple

import imagehash
from PIL import Image, ImageStat, UnidentifiedImageError

from playproof.errors import UnsupportedMedia

# Longest side decoded: ample for a 32x32 DCT and a blankness test, and lets
# JPEG decode at 1/4 or 1/8 scale (Image.draft), the bulk of the saving.
DECODE_SIZE: Final = 256
# A 64-bit pHash. Re-encoding or rescaling the same frame moves it by 0-4 bits;
# unrelated pictures differ by ~32 +- 4 bits, so at <= 10 a false match is
# about one in ten million while a recompressed capture still matches.
HASH_SIZE: Final = 8
DEFAULT_MATCH_THRESHOLD: Final = 10
# Greyscale standard deviation (0-255) under which a frame is uniform: JPEG
# noise on a flat frame stays under 2, and any visible text or picture on it
# lifts the deviation well past 4.
BLANK_STDDEV: Final = 4.0

_HEX = re.compile(r"[0-9a-f]+")
# What Pillow's format plugins raise on bytes that are not a whole image.
_UNDECODABLE = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    struct.error,
    Image.DecompressionBombError,
)


class ImageFacts(NamedTuple):
    """What the verifier needs of a picture: its hash, whether blank, its full size."""

    phash: str
    blank: bool
    width: int
    height: int


def fingerprint(data: bytes) -> ImageFacts:
    """Decode an image (downscaled) and hash it; UnsupportedMedia if it is not one."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
            grey = _small_grey(image)
    except UnidentifiedImageError:
        raise UnsupportedMedia(
            f"expected an image (PNG, JPEG, ...), got {len(data)} bytes in no format known"
        ) from None
    except _UNDECODABLE as exc:
        raise UnsupportedMedia(
            f"expected a whole image, got one that does not decode: {exc}"
        ) from None
    phash = str(imagehash.phash(grey, hash_size=HASH_SIZE))
    return ImageFacts(phash, is_blank(grey), size[0], size[1])


def _small_grey(image: Image.Image) -> Image.Image:
    # draft() only acts on JPEG (decoding at 1/2..1/8 scale); thumbnail() covers the rest.
    image.draft("L", (DECODE_SIZE, DECODE_SIZE))
    grey = image.convert("L")
    grey.thumbnail((DECODE_SIZE, DECODE_SIZE))
    return grey


def is_blank(grey: Image.Image) -> bool:
    """Whether a greyscale picture is a uniform frame (black, white or any one shade)."""
    return bool(ImageStat.Stat(grey).stddev[0] < BLANK_STDDEV)


def hash_distance(a_hex: str, b_hex: str) -> int:
    """The number of bits two hex perceptual hashes differ by; ValueError if not comparable."""
    if len(a_hex) != len(b_hex) or not (_HEX.fullmatch(a_hex) and _HEX.fullmatch(b_hex)):
        raise ValueError(f"expected two lowercase hex hashes of one size, got {a_hex!r}, {b_hex!r}")
    return (int(a_hex, 16) ^ int(b_hex, 16)).bit_count()


def matches(
    facts: ImageFacts,
    reference_hashes: Sequence[str],
    threshold: int = DEFAULT_MATCH_THRESHOLD,
) -> bool:
    """Whether the picture is within `threshold` bits of any reference (False if none)."""
    return any(hash_distance(facts.phash, ref) <= threshold for ref in reference_hashes)
