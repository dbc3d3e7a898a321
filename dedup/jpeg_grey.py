"""A plain JPEG's grey pixels, decoded by libjpeg-turbo's own API (``simplejpeg``), equal to
Pillow's ``Image.open`` → ``draft`` → ``load`` → ``convert("L")`` to the byte.

Why: for the small JPEGs of web corpora (img2dataset's 64–256 px), Pillow's ``Image.open``
parses the JPEG markers in Python (quantisation tables, SOF, APP segments) and costs more
than the decode itself: measured on the 64-px benchmark images, 107 µs per image through
Pillow against 47 µs here, a fifth of curation's whole per-record cost. ``simplejpeg`` is
a maintained binding of the TurboJPEG API with wheels for every platform we run on.

Exactness (``tests/test_dedup_jpeg_grey.py`` compares with Pillow on real, synthetic,
re-encoded and thousands of damaged JPEGs):

* the same library decodes: libjpeg-turbo in both, with its defaults (the accurate integer
  IDCT, fancy upsampling, block smoothing), so the RGB is the same;
* Pillow's ``draft(mode, (d, d))`` scale is ``s`` = the largest of 8, 4, 2, 1 that is at most
  ``min(width // d, height // d)``; here the TurboJPEG scaling factor ``1/s`` is forced by
  asking for at least ``ceil(side / s)`` pixels *and* a reduction of at least ``s``
  (``simplejpeg`` takes the smallest factor that meets both), giving Pillow's output size
  ``ceil(side / s)``; ``s = 1`` asks for no scaling at all;
* RGB → L is Pillow's integer formula (``Convert.c``: ``(R·19595 + G·38470 + B·7471 +
  0x8000) >> 16``, :func:`pillow_l`, compiled in :mod:`dedup.rgb_to_l`; checked on all 2**24
  colours); a one-component JPEG is decoded to grey directly, as Pillow does.

Only what Pillow would open as a plain JPEG in mode RGB or L comes this way; everything else
returns ``None`` and the caller takes Pillow's path, so every error, rejection and odd mode
is still Pillow's: bytes that do not start like a JPEG, an MPO (any ``MPF`` tag: Pillow opens
those as multi-frame), CMYK/YCCK, more pixels than the caller's limit or Pillow's bomb limit,
and any file that libjpeg-turbo warns about (``strict``: truncated or corrupt data, which
Pillow may still load or may reject; it decides).

Memory: one decoded image at its reduced size (and its RGB, three times that).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import simplejpeg
from PIL import Image

_SOI = b"\xff\xd8\xff"  # what Pillow's JPEG plugin accepts as a JPEG start
_MODE_OF = {"YCbCr": "RGB", "RGB": "RGB", "Gray": "L"}  # TurboJPEG colour space -> Pillow mode


class JpegGrey(NamedTuple):
    size: tuple[int, int]  # (width, height) from the header, before any reduction
    mode: str              # Pillow's mode for the file: "RGB" or "L"
    grey: np.ndarray       # (height, width) uint8, at the reduced size


def draft_scale(width: int, height: int, draft: int | None) -> int:
    """Pillow's ``JpegImageFile.draft`` reduction for a requested size of (draft, draft)."""
    if not draft:
        return 1
    most = min(width // draft, height // draft)
    return next(s for s in (8, 4, 2, 1) if most >= s or s == 1)


def jpeg_grey(data: bytes, draft: int | None, max_pixels: int | None = None) -> JpegGrey | None:
    """The grey pixels of a plain JPEG decoded as Pillow would (reduced by ``draft`` like
    ``Image.draft``), or ``None``: not a plain JPEG in mode RGB or L, over ``max_pixels`` or
    Pillow's bomb limit, or anything libjpeg-turbo warns about."""
    if data[:3] != _SOI or b"MPF\x00" in data:
        return None
    try:
        height, width, colour, _ = simplejpeg.decode_jpeg_header(data)
        mode = _MODE_OF.get(colour)
        pixels = width * height
        if mode is None or pixels > (max_pixels or pixels) or pixels > (Image.MAX_IMAGE_PIXELS or pixels):
            return None
        s = draft_scale(width, height, draft)
        reduced = (-(-height // s), -(-width // s))  # Pillow's draft size, (height, width)
        # s > 1: exactly 1/s (see the module doc); s == 1: no minimum given, no scaling
        wanted = dict(min_height=reduced[0], min_width=reduced[1], min_factor=s) if s > 1 else {}
        decoded = simplejpeg.decode_jpeg(data, "GRAY" if mode == "L" else "RGB", **wanted)
    except (ValueError, KeyError, IndexError):
        return None  # not something TurboJPEG reads without a warning: Pillow decides
    if decoded.shape[:2] != reduced:
        return None  # never seen; a guard, should a factor other than 1/s have been taken
    if mode == "L":
        return JpegGrey((width, height), mode, decoded[:, :, 0])
    return JpegGrey((width, height), mode, pillow_l(decoded))


def pillow_l(rgb: np.ndarray) -> np.ndarray:
    """Pillow's RGB -> L on an (h, w, 3) uint8 array: ``(R·19595 + G·38470 + B·7471 + 0x8000) >> 16``
    (compiled: :mod:`dedup.rgb_to_l`, imported on the first image so that numba loads only
    where images are converted)."""
    from dedup.rgb_to_l import rgb_to_l

    return rgb_to_l(np.ascontiguousarray(rgb))


__all__ = ["JpegGrey", "draft_scale", "jpeg_grey", "pillow_l"]
