"""Screenshot analysis: blank frames, matching a reference after re-encoding, bad bytes."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image, ImageDraw

from playproof.errors import ProtocolError
from playproof.imaging import (
    DEFAULT_MATCH_THRESHOLD,
    fingerprint,
    hash_distance,
    matches,
)

FULL_HD = (1920, 1080)


def encode(image: Image.Image, fmt: str, **options: int) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def pattern(seed: int, size: tuple[int, int] = FULL_HD) -> Image.Image:
    """A frame of coloured blocks, like a creative: different seeds, different pictures."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, (20, 30, 40))
    draw = ImageDraw.Draw(image)
    w, h = size
    for _ in range(30):
        x, y = rng.randrange(w), rng.randrange(h)
        box = (x, y, x + rng.randrange(w // 20, w // 3), y + rng.randrange(h // 10, h // 3))
        draw.rectangle(box, fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    return image


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (40, 90, 200)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_uniform_frame_is_blank(colour: tuple[int, int, int], fmt: str) -> None:
    facts = fingerprint(encode(Image.new("RGB", FULL_HD, colour), fmt))
    assert facts.blank
    assert (facts.width, facts.height) == FULL_HD


def test_a_dark_frame_with_a_little_text_is_not_blank() -> None:
    image = Image.new("RGB", FULL_HD, (0, 0, 0))
    ImageDraw.Draw(image).text((900, 500), "Winter sale", fill=(255, 255, 255), font_size=60)
    assert not fingerprint(encode(image, "PNG")).blank


def test_a_patterned_frame_is_not_blank() -> None:
    assert not fingerprint(encode(pattern(1), "PNG")).blank


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_frame_matches_its_reference_after_jpeg_at_quality_85(seed: int) -> None:
    reference = fingerprint(encode(pattern(seed), "PNG"))
    screenshot = fingerprint(encode(pattern(seed), "JPEG", quality=85))
    assert matches(screenshot, [reference.phash])


def test_a_frame_matches_a_smaller_reference_of_the_same_picture() -> None:
    reference = fingerprint(encode(pattern(4).resize((640, 360)), "PNG"))
    screenshot = fingerprint(encode(pattern(4), "JPEG", quality=85))
    assert matches(screenshot, [reference.phash])


@pytest.mark.parametrize(("seed", "other"), [(1, 2), (3, 4), (5, 6)])
def test_a_frame_does_not_match_a_different_picture(seed: int, other: int) -> None:
    screenshot = fingerprint(encode(pattern(seed), "JPEG", quality=85))
    reference = fingerprint(encode(pattern(other), "PNG"))
    assert hash_distance(screenshot.phash, reference.phash) > DEFAULT_MATCH_THRESHOLD
    assert not matches(screenshot, [reference.phash])


def test_a_frame_matches_when_any_reference_does() -> None:
    screenshot = fingerprint(encode(pattern(7), "JPEG", quality=85))
    refs = [fingerprint(encode(pattern(n), "PNG")).phash for n in (8, 7)]
    assert matches(screenshot, refs)
    assert not matches(screenshot, [])


def test_hash_distance_counts_differing_bits() -> None:
    assert hash_distance("0000000000000000", "0000000000000000") == 0
    assert hash_distance("0000000000000000", "000000000000000f") == 4
    assert hash_distance("ffffffffffffffff", "0000000000000000") == 64


@pytest.mark.parametrize(("a", "b"), [("00", "000"), ("0x00", "0000"), ("zz", "00"), ("", "")])
def test_hashes_that_cannot_be_compared_are_refused(a: str, b: str) -> None:
    with pytest.raises(ValueError, match="hex"):
        hash_distance(a, b)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not an image at all",
        encode(pattern(1), "JPEG")[:2000],
        encode(pattern(1), "PNG")[:200],
        b"\x89PNG\r\n\x1a\n" + b"\0" * 64,
    ],
    ids=["empty", "text", "truncated-jpeg", "truncated-png", "png-magic-only"],
)
def test_bytes_that_are_not_a_whole_image_raise_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="expected"):
        fingerprint(data)
