"""Images for tests and benchmarks, made the way the corpus and the eval sets hold them.

One place for what several test modules and ``bench/bench_dedup_quality.py`` need: an image
flattened on white (``dedup.phash.flatten_on_white``, as img2dataset does), scikit-image's
photos, PNG bytes (an eval image file) and ``shard_bytes`` (a curated shard's image).
"""

from __future__ import annotations

import io

from PIL import Image

from curation.decode import encode_jpeg
from dedup.phash import flatten_on_white


def on_white(image: Image.Image) -> Image.Image:
    """RGB, transparent pixels composited on white."""
    return flatten_on_white(image).convert("RGB")


def photo(name: str) -> Image.Image:
    """One of scikit-image's bundled photos, in RGB."""
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def shard_bytes(image: Image.Image) -> bytes:
    """As a curated shard stores an image: RGB JPEG q95, shorter side at most 256 px (bicubic)."""
    image = image.convert("RGB")
    scale = 256 / min(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
    return encode_jpeg(image, 95)
