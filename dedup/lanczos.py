"""Pillow's Lanczos resize of an 8-bit grey image, to the same bytes, as two matrix products.

Why by hand: pHash shrinks every image to 32×32 with ``Image.resize(..., LANCZOS)``, and for
the small images curation sees most (a 64-px thumbnail, a JPEG drafted to 64–128 px) Pillow
spends most of that call computing its filter coefficients — about 1,500 ``sin`` calls, again
for every image — rather than filtering (~55 µs of a ~60 µs resize here). The coefficients
depend only on the input and output sizes, so they are computed once per size and cached.

The arithmetic is Pillow's (``src/libImaging/Resample.c``, 8 bits per channel), not an
approximation of it:

* coefficients: the truncated-sinc Lanczos filter (support 3) at each output pixel's centre,
  normalised to sum 1, then rounded to integers at 22 bits of precision — computed in Python
  floats (IEEE doubles, the same operations in the same order, and libm's ``sin``);
* each pass: an integer sum of pixel × coefficient plus half a unit, shifted down 22 bits and
  clipped to 0–255; the horizontal pass first, then the vertical one on its 8-bit result
  (the other way round for an image over 100 times taller than wide, as ``Image.resize``
  does).

A float64 matrix product computes those integer sums exactly: every product and partial sum
is an integer far below 2**53 (|sum| < 2**31, as Pillow's own int32 accumulator requires), so
any order of summation gives the same value. ``tests/test_dedup_phash.py`` checks the bytes
against Pillow on random images of many sizes, and the coefficients through Pillow's own
32-bit integer resize of impulses of 2**30 (which
reads the double coefficients to 30 bits).

Memory: one coefficient matrix per (input side, output side) pair seen, at most
:data:`CACHE_SIZES` of them, each at most :data:`MAX_SIDE` × 32 float64 (128 KiB): ≤ 32 MiB,
whatever the corpus; and, in :func:`resize_grey_many`, at most :data:`BATCH_PIXELS` input
pixels as float64 at a time (8 MiB). A side longer than :data:`MAX_SIDE` is resized by
Pillow itself.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image

PRECISION_BITS = 22  # Pillow's: 32 bits, less 8 for the pixel, less 2 for the filter's overshoot
SUPPORT = 3.0
MAX_SIDE = 512
CACHE_SIZES = 256


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    if -3.0 <= x < 3.0:
        return _sinc(x) * _sinc(x / 3)
    return 0.0


def _to_fixed(k: float) -> int:
    return int(-0.5 + k * (1 << PRECISION_BITS)) if k < 0 else int(0.5 + k * (1 << PRECISION_BITS))


def coefficients(in_size: int, out_size: int) -> list[tuple[int, list[float]]]:
    """Pillow's ``precompute_coeffs``: per output pixel, the first input pixel it reads and
    the normalised filter weights (doubles) of the pixels from there on."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = SUPPORT * filterscale
    out = []
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)  # C's (int) truncates toward zero, as int() does
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [_lanczos((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        ww = 0.0
        for w in k:
            ww += w
        out.append((xmin, [w / ww if ww != 0.0 else w for w in k]))
    return out


@lru_cache(maxsize=CACHE_SIZES)
def weights(in_size: int, out_size: int) -> np.ndarray:
    """(in_size, out_size) float64: column j holds output pixel j's integer coefficients at
    the input pixels it reads (:func:`coefficients`, then ``normalize_coeffs_8bpc``)."""
    matrix = np.zeros((in_size, out_size))
    for xx, (xmin, k) in enumerate(coefficients(in_size, out_size)):
        matrix[xmin:xmin + len(k), xx] = [_to_fixed(w) for w in k]
    matrix.flags.writeable = False
    return matrix


def _clip8(sums: np.ndarray) -> np.ndarray:
    """Pillow's ``clip8``: (sum + 2**21) >> 22, clipped to 0–255, in place. Exact in float64:
    the scaling is by a power of two and the floor is of an exact value."""
    sums *= 1.0 / (1 << PRECISION_BITS)
    sums += 0.5
    np.floor(sums, out=sums)
    return sums.clip(0, 255, out=sums)


def _resize_stack(stack: np.ndarray, size: int) -> np.ndarray:
    """:func:`resize_grey` of each of a (B, height, width) stack of same-shaped images."""
    _, height, width = stack.shape
    out = stack.astype(np.float64)
    if height > width * 100 and size < height:  # Image.resize shrinks a very tall image's height first
        out = _clip8(weights(height, size).T @ out)
        height = size
    if width != size:
        out = _clip8(out @ weights(width, size))
    if height != size:
        out = _clip8(weights(height, size).T @ out)
    return out.astype(np.uint8)


def resize_grey(pixels: np.ndarray, size: int) -> np.ndarray:
    """``Image.fromarray(pixels).resize((size, size), LANCZOS)`` as a uint8 array, for an 8-bit
    grey (height, width) array."""
    if max(pixels.shape) > MAX_SIDE:
        return np.asarray(Image.fromarray(pixels, "L").resize((size, size), Image.Resampling.LANCZOS))
    return _resize_stack(pixels[None], size)[0]


BATCH_PIXELS = 1 << 20
"""At most this many input pixels are resized in one matrix product (~8 MB of float64)."""


def resize_grey_many(images: list[np.ndarray], size: int) -> np.ndarray:
    """(B, size, size) uint8: :func:`resize_grey` of each image, same-shaped images resized
    together in one matrix product per pass (a corpus shard's images mostly share a shape:
    img2dataset resizes them to one size), so numpy's per-call cost is paid per shape, not per
    image. The same bytes as one at a time: each output is the same exact integer sums."""
    out = np.empty((len(images), size, size), np.uint8)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, pixels in enumerate(images):
        by_shape.setdefault(pixels.shape, []).append(i)
    for (height, width), members in by_shape.items():
        if max(height, width) > MAX_SIDE:
            for i in members:
                out[i] = resize_grey(images[i], size)
            continue
        step = max(1, BATCH_PIXELS // (height * width))
        for first in range(0, len(members), step):
            chunk = members[first:first + step]
            out[chunk] = _resize_stack(np.stack([images[i] for i in chunk]), size)
    return out


__all__ = ["MAX_SIDE", "coefficients", "resize_grey", "resize_grey_many", "weights"]
