"""dedup.jpeg_grey: a plain JPEG's grey pixels equal Pillow's open → draft → load → convert("L"),
on real photos and drawings encoded every way Pillow can, and on thousands of damaged files;
everything it declines is left to Pillow."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from dedup.jpeg_grey import draft_scale, jpeg_grey, pillow_l
from tests.images import on_white, photo

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field")


def pillow_grey(data: bytes, draft: int | None) -> tuple[tuple[int, int], str, np.ndarray]:
    """The reference: what Pillow gives for the same bytes (raises what Pillow raises)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = Image.open(io.BytesIO(data))
        size, mode = image.size, image.mode
        if draft:
            image.draft(image.mode, (draft, draft))
        image.load()
        return size, mode, np.asarray(image.convert("L"))


def _jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def sources(demo_data):
    """Real photos (scikit-image) and real drawings (openclipart, emoji), RGB and grey."""
    images = [photo(name) for name in PHOTOS]
    cache = demo_data.cache
    clip = [p for p in sorted((cache / "openclipart/png").rglob("*.png")) if p.stat().st_size < 150_000][::150]
    emoji = sorted((cache / "emoji/img/google/64").glob("*.png"))[::200]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images += [on_white(Image.open(p)) for p in clip + emoji]
    assert len(images) > 20
    return images


# sides either side of every draft step for draft=64 (the scale changes at 128, 256 and 512)
SIDES = (1, 7, 8, 9, 63, 64, 65, 127, 128, 129, 255, 256, 257, 300, 511, 512, 513, 700, 1030)
ENCODINGS = (
    dict(quality=95), dict(quality=30), dict(quality=75, subsampling=0), dict(quality=75, subsampling=1),
    dict(quality=75, subsampling=2), dict(quality=85, progressive=True), dict(quality=90, optimize=True),
)


def _variants(sources):
    rng = np.random.default_rng(0)
    for i, image in enumerate(sources):
        for _ in range(4):
            width, height = (int(rng.choice(SIDES)) for _ in range(2))
            resized = image.resize((width, height), Image.Resampling.BILINEAR)
            options = ENCODINGS[int(rng.integers(len(ENCODINGS)))]
            yield resized if i % 3 else resized.convert("L"), options


def test_equal_to_pillow_on_real_images_every_size_and_encoding(sources):
    taken = 0
    for image, options in _variants(sources):
        data = _jpeg(image, **options)
        for draft in (64, None):
            fast = jpeg_grey(data, draft)
            assert fast is not None, (image.size, image.mode, options)
            size, mode, grey = pillow_grey(data, draft)
            assert (fast.size, fast.mode) == (size, mode)
            assert fast.grey.shape == grey.shape and np.array_equal(fast.grey, grey), (image.size, options, draft)
            taken += 1
    assert taken > 150


def test_draft_scale_is_pillows_rule():
    """The reduction Pillow's draft picks for (64, 64): the largest of 8/4/2/1 <= min(w//64, h//64)."""
    for width, height, expected in ((63, 500, 1), (127, 127, 1), (128, 128, 2), (255, 1000, 2), (256, 256, 4),
                                    (511, 600, 4), (512, 512, 8), (5000, 4000, 8), (4000, 100, 1)):
        assert draft_scale(width, height, 64) == expected
        data = _jpeg(Image.new("RGB", (width, height), (90, 120, 200)))
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (64, 64))
            assert image.size == (-(-width // expected), -(-height // expected))
    assert draft_scale(5000, 4000, None) == 1


def test_damaged_jpegs_are_either_pillows_pixels_or_left_to_pillow(sources):
    """Cut short, bytes flipped, bytes inserted: whenever jpeg_grey answers, Pillow loads the
    same file without error and gives the same pixels. Else the caller asks Pillow."""
    rng = np.random.default_rng(1)
    answered = declined = 0
    for image, options in list(_variants(sources))[:40]:
        data = _jpeg(image, **options)
        for _ in range(60):
            damaged = bytearray(data)
            kind = int(rng.integers(3))
            if kind == 0:
                damaged = damaged[: int(rng.integers(2, len(data)))]
            elif kind == 1:
                for at in rng.integers(2, len(data), size=int(rng.integers(1, 4))):
                    damaged[at] ^= 1 << int(rng.integers(8))
            else:
                at = int(rng.integers(2, len(data)))
                damaged[at:at] = rng.integers(0, 256, size=int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
            damaged = bytes(damaged)
            fast = jpeg_grey(damaged, 64)
            if fast is None:
                declined += 1
                continue
            answered += 1
            size, mode, grey = pillow_grey(damaged, 64)  # must not raise
            assert (fast.size, fast.mode) == (size, mode)
            assert np.array_equal(fast.grey, grey)
    assert answered > 300 and declined > 300, (answered, declined)


def test_what_is_left_to_pillow():
    rgb = Image.new("RGB", (200, 150), (10, 200, 30))
    assert jpeg_grey(b"", 64) is None
    assert jpeg_grey(b"\x89PNG\r\n\x1a\n" + b"\0" * 64, 64) is None
    assert jpeg_grey(b"<!doctype html><html>not an image</html>", 64) is None
    cmyk = _jpeg(Image.new("CMYK", (200, 150), (10, 200, 30, 5)))
    assert jpeg_grey(cmyk, 64) is None and Image.open(io.BytesIO(cmyk)).mode == "CMYK"
    buffer = io.BytesIO()
    rgb.save(buffer, "MPO", save_all=True, append_images=[Image.new("RGB", (200, 150), (200, 0, 0))])
    mpo = buffer.getvalue()
    assert Image.open(io.BytesIO(mpo)).format == "MPO" and jpeg_grey(mpo, 64) is None
    plain = _jpeg(rgb)
    assert jpeg_grey(plain, 64, max_pixels=200 * 150) is not None
    assert jpeg_grey(plain, 64, max_pixels=200 * 150 - 1) is None  # over the caller's limit: Pillow's path rejects it
    assert jpeg_grey(plain[: len(plain) // 2], 64) is None  # truncated: libjpeg-turbo warns


def test_rgb_to_l_is_pillows_on_every_colour():
    levels = np.arange(256, dtype=np.uint8)
    colours = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(4096, 4096, 3)
    expected = np.asarray(Image.fromarray(colours, "RGB").convert("L"))
    assert np.array_equal(pillow_l(colours), expected)
