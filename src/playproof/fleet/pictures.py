"""What simulated screens show: a small picture per content, and a capture source that takes it.

Simulation only. Each content's picture is drawn from its id alone (a background,
a dozen shapes placed by a hash of the id, and the id in large type), so the
fleet's reference images and its screenshots are made the same way and two
contents' pictures differ by far more than the verifier's perceptual-hash
threshold, while a screenshot (the picture with the screen's clock in a corner,
as a capture of a live screen would differ from the master) stays well within it.
None is a flat colour: a flat frame is what `screenshot_blank` is for.
"""

from __future__ import annotations

import hashlib
import io
import random
import time
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Final

from PIL import Image, ImageDraw, ImageFont

SIZE: Final = (320, 180)
SHAPES: Final = 12
# A clock in this small type moves a picture's 64-bit perceptual hash by at most 4 bits.
CAPTION_PX: Final = 8


@lru_cache(maxsize=256)
def _master(content_id: str) -> Image.Image:
    """The content's picture, without any caption (cached: screens show it again and again)."""
    rng = random.Random(hashlib.sha256(content_id.encode()).digest())
    width, height = SIZE
    image = Image.new("RGB", SIZE, _colour(rng, 40, 120))
    draw = ImageDraw.Draw(image)
    for _ in range(SHAPES):
        x, y = rng.randrange(width), rng.randrange(height)
        w, h = rng.randint(30, 140), rng.randint(20, 90)
        box = (x - w // 2, y - h // 2, x + w // 2, y + h // 2)
        if rng.random() < 0.5:
            draw.rectangle(box, fill=_colour(rng, 80, 255))
        else:
            draw.ellipse(box, fill=_colour(rng, 80, 255))
    font = ImageFont.load_default(size=36)
    draw.text((12, height // 2 - 20), content_id, fill="white", font=font, stroke_width=2,
              stroke_fill="black")  # fmt: skip
    return image


def _colour(rng: random.Random, low: int, high: int) -> tuple[int, int, int]:
    return (rng.randint(low, high), rng.randint(low, high), rng.randint(low, high))


def picture(content_id: str, caption: str = "") -> bytes:
    """The content's picture as PNG bytes, with `caption` in small type in a corner if given."""
    image = _master(content_id)
    if caption:
        image = image.copy()
        draw = ImageDraw.Draw(image)
        draw.text((SIZE[0] - 8 * CAPTION_PX // 2 - 8, SIZE[1] - CAPTION_PX - 3), caption,
                  fill=(235, 235, 235), font=ImageFont.load_default(size=CAPTION_PX))  # fmt: skip
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


class SimulatedCapture:
    """A stand-in for a real display's capture (simulation only): it draws what plays now.

    A real player captures its screen (`device.screenshot.MssCapture`); a simulated
    screen has none, so this `CaptureSource` draws the picture of the content the
    screen says it is showing, captioned with the screen's own clock. `wrong` maps a
    content to another whose picture the screen shows instead (a mistake made on
    purpose, which the verifier should catch as `screenshot_mismatch`).
    """

    def __init__(
        self,
        showing: Callable[[], str | None],
        wall: Callable[[], float],
        wrong: Mapping[str, str] | None = None,
    ) -> None:
        self.showing = showing
        self.wall = wall
        self.wrong = dict(wrong or {})

    async def capture(self) -> bytes | None:
        """The picture on screen now as PNG bytes; None when nothing is showing."""
        content_id = self.showing()
        if content_id is None:
            return None
        # Small enough (a few milliseconds) to draw on the event loop.
        caption = time.strftime("%H:%M:%S", time.gmtime(self.wall()))
        return picture(self.wrong.get(content_id, content_id), caption)
