"""pHash: equal to imagehash on real images, mirror signal exact, reduced JPEG decode bounded;
the 32x32 resize equal to Pillow's."""

from __future__ import annotations

import io
import warnings

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageOps

from dedup.lanczos import BATCH_PIXELS, coefficients, resize_grey, resize_grey_many
from dedup.phash import (DEFAULT_SETTINGS, HashSettings, HashSettingsMismatch, check_same_settings,
                         hamming, hash_image_bytes, hash_many_bytes, mirror_phash64, phash64,
                         phash64_batch)
from tests.images import shard_bytes


def _imagehash_int(image: Image.Image) -> int:
    return int(str(imagehash.phash(image)), 16)


@pytest.fixture(scope="module")
def real_images(demo_data):
    """Real emoji, MNIST digits and small openclipart PNGs, chosen by sorted name (stable)."""
    cache = demo_data.cache
    paths = sorted((cache / "emoji/img/google/64").glob("*.png"))[::12]
    paths += sorted((cache / "mnist-png").rglob("*.png"))[::200]
    clip = [p for p in sorted((cache / "openclipart/png").rglob("*.png")) if p.stat().st_size < 150_000]
    paths += clip[::60]
    images = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            image = Image.open(path)
            image.load()
            images.append(image)
    assert len(images) > 250
    return images


def test_phash64_equals_imagehash_bit_for_bit(real_images):
    expected = [_imagehash_int(im) for im in real_images]
    assert [phash64(im) for im in real_images[:20]] == expected[:20]
    assert phash64_batch(real_images).tolist() == expected


def test_threshold_is_imagehash_median_rule_with_ties():
    """bit = coefficient > np.median of the 64 (imagehash's rule), MSB first — also when many
    coefficients tie at the median, as on flat or two-tone images."""
    from dedup.phash import _threshold

    rng = np.random.default_rng(0)
    blocks = [rng.normal(size=(200, 64)) * 50,
              np.round(rng.normal(size=(200, 64)) * 2),          # many ties
              np.where(rng.random((200, 64)) < 0.5, 0.0, 3.0),    # two values only
              np.zeros((1, 64))]
    for coefficients in blocks:
        bits = coefficients > np.median(coefficients, axis=1, keepdims=True)
        expected = [int("".join("1" if b else "0" for b in row), 2) for row in bits]
        assert _threshold(coefficients).tolist() == expected


def test_bit_order_is_imagehash_hex_order():
    # a left-bright / right-dark image: the DC term (bit 0 of the 8x8, the MSB) is above median
    image = Image.fromarray(np.tile(np.linspace(255, 0, 64), (64, 1)).astype(np.uint8))
    value = phash64(image)
    assert f"{value:016x}" == str(imagehash.phash(image))
    bits = np.asarray(imagehash.phash(image).hash).reshape(-1)
    assert bool(value >> 63) == bool(bits[0]) and bool(value & 1) == bool(bits[-1])


def test_mirror_hash_equals_hash_of_mirrored_image(real_images):
    for image in real_images[::3]:
        assert mirror_phash64(image) == _imagehash_int(ImageOps.mirror(image))


def test_reduced_jpeg_decode_disagreement_is_bounded(real_images):
    """Draft decode vs full decode: the same image, a few bits apart at most (measured bound)."""
    blobs = [shard_bytes(im) for im in real_images]
    full = np.array([phash64(Image.open(io.BytesIO(b))) for b in blobs], np.uint64)
    draft = np.array([hash_image_bytes(b)[0] for b in blobs], np.uint64)
    exact = np.array([hash_image_bytes(b, HashSettings(jpeg_draft=None))[0] for b in blobs], np.uint64)
    assert np.array_equal(exact, full)  # no draft = the full decode, exactly
    dist = hamming(full, draft)
    assert dist.max() <= 8, np.bincount(dist)
    assert np.mean(dist <= 4) >= 0.95, np.bincount(dist)
    assert dist.any()  # the draft really changes the decode (else this test proves nothing)


def test_batched_bytes_hashing_keeps_order_and_reports_bad_bytes(real_images):
    blobs = [shard_bytes(im) for im in real_images[:5]]
    mixed = blobs[:2] + [b"not an image", blobs[2][: len(blobs[2]) // 3]] + blobs[2:]
    results = list(hash_many_bytes(mixed, batch=2))
    assert len(results) == len(mixed)
    assert isinstance(results[2], Exception)
    good = [r for i, r in enumerate(results) if i not in (2, 3)]
    assert good == [hash_image_bytes(b) for b in blobs]


def test_transparency_is_flattened_on_white_like_the_corpus(real_images):
    """An RGBA eval PNG hashes like its img2dataset corpus copy (alpha matted on white)."""
    rgba = [im for im in real_images if im.mode == "RGBA"][:20]
    assert rgba
    for image in rgba:
        png = io.BytesIO()
        image.save(png, "PNG")
        pixels = np.asarray(image, np.float64)
        alpha = pixels[..., 3:] / 255
        matted = Image.fromarray(np.rint(alpha * pixels[..., :3] + 255 * (1 - alpha)).astype(np.uint8))
        assert hamming(hash_image_bytes(png.getvalue())[0], phash64(matted)) <= 2
        assert hash_image_bytes(png.getvalue(), HashSettings(flatten_alpha=False))[0] == phash64(image)


def test_settings_mismatch_is_a_clear_error():
    check_same_settings(DEFAULT_SETTINGS, HashSettings())
    with pytest.raises(HashSettingsMismatch, match="jpeg_draft"):
        check_same_settings(HashSettings(jpeg_draft=None), DEFAULT_SETTINGS)
    assert HashSettings.from_dict(DEFAULT_SETTINGS.to_dict()) == DEFAULT_SETTINGS


# ---- the 32x32 resize: Pillow's bytes without Pillow's per-call set-up (dedup.lanczos) ------

_SIDES = [1, 2, 5, 31, 32, 33, 47, 63, 64, 65, 96, 100, 127, 128, 129, 200, 255, 256, 333, 511, 512, 513, 900]


@pytest.mark.parametrize("height", _SIDES)
def test_grey_resize_is_pillows_to_the_byte(height):
    rng = np.random.default_rng(height)
    for width in _SIDES:
        # uniform noise, and a smooth ramp with hard edges (pixel values near the clip bounds)
        noise = rng.integers(0, 256, (height, width), dtype=np.uint8)
        ramp = np.add.outer(np.arange(height) * 255 // max(height, 1), np.arange(width) % 2 * 255).clip(0, 255).astype(np.uint8)
        for pixels in (noise, ramp):
            expected = np.asarray(Image.fromarray(pixels, "L").resize((32, 32), Image.Resampling.LANCZOS))
            assert np.array_equal(resize_grey(pixels, 32), expected), (height, width)


def test_grey_resize_coefficients_are_pillows_to_30_bits():
    # Pillow's 32-bit integer resize sums pixel x double coefficient and rounds: an impulse of
    # 2**30 reads each coefficient to 30 bits, more than the 22 the 8-bit resize keeps
    impulse = 1 << 30
    for side in list(range(1, 140)) + [255, 256, 400, 512]:
        read = np.asarray(Image.fromarray(np.eye(side, dtype=np.int32) * impulse, "I")
                          .resize((32, side), Image.Resampling.LANCZOS)).astype(np.int64)
        ours = np.zeros((side, 32), np.int64)
        for j, (first, weights) in enumerate(coefficients(side, 32)):
            for i, w in enumerate(weights):
                value = impulse * w
                ours[first + i, j] = int(value + 0.5) if value >= 0 else int(value - 0.5)  # Pillow's ROUND_UP
        assert np.array_equal(ours, read), side


def test_grey_resizes_batched_by_shape_are_the_same_bytes():
    rng = np.random.default_rng(3)
    shapes = [(64, 64)] * 300 + [(48, 64), (64, 48), (600, 40), (3, 700), (1, 1), (32, 32)] * 3 + [(256, 256)] * 20
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in rng.permutation(np.array(shapes, dtype=object))]
    assert 300 * 64 * 64 > BATCH_PIXELS  # the 64x64 group is split into several products
    batched = resize_grey_many(images, 32)
    assert batched.shape == (len(images), 32, 32)
    for image, resized in zip(images, batched):
        assert np.array_equal(resized, resize_grey(image, 32))
