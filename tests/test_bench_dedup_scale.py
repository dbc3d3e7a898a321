"""The border trim that bench/bench_dedup_scale.py --trim-idea measures: what it removes follows
from how the test image is drawn (a drawing on white margins, framed by a coloured border)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from bench_dedup_scale import trim_uniform_border  # noqa: E402


def drawing() -> Image.Image:
    """100 x 80 white, a filled ellipse from (20, 10) to (79, 69) inclusive."""
    image = Image.new("RGB", (100, 80), "white")
    ImageDraw.Draw(image).ellipse((20, 10, 79, 69), fill=(200, 30, 30), outline=(0, 0, 0))
    return image


@pytest.mark.parametrize("colour", ["black", (128, 128, 128), "white"])
def test_a_border_and_the_white_margin_inside_it_are_trimmed_to_the_drawing(colour):
    framed = ImageOps.expand(drawing(), border=12, fill=colour)
    trimmed = trim_uniform_border(framed)
    assert trimmed is not None and trimmed.size == (60, 60)  # the ellipse's bounding box
    assert trimmed.tobytes() == drawing().crop((20, 10, 80, 70)).tobytes()


def test_nothing_to_trim_and_nothing_left_are_none():
    full = Image.new("RGB", (50, 50), (10, 200, 10))
    ImageDraw.Draw(full).rectangle((0, 0, 24, 49), fill=(200, 10, 10))  # content reaches every edge
    assert trim_uniform_border(full) is None
    assert trim_uniform_border(Image.new("RGB", (64, 64), "white")) is None  # a blank image: nothing left
    dot = Image.new("RGB", (64, 64), "white")
    dot.putpixel((30, 30), (0, 0, 0))
    assert trim_uniform_border(dot) is None  # under 8 px would be left
