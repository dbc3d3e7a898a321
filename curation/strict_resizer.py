"""img2dataset's Resizer with a strict gate in front: bombs, non-images and truncated files
are refused with a precise reason *before* OpenCV decodes them.

Why: img2dataset decodes with ``cv2.imdecode`` first and checks the area after, so a real
620 M-pixel PNG from openclipart is fully decoded (≈2.5 GB, then ≈15 GB of float64 for its
alpha matting) before being refused; and OpenCV fills a truncated JPEG with grey instead of
failing. Pillow reads the header (size, format) without decoding, and decodes JPEG at 1/8
scale (``draft``) cheaply enough to notice truncation. img2dataset has no hook for this, so
:func:`strict_resizing` swaps its ``Resizer`` class for this subclass while ``download`` runs;
the instance is pickled by reference, so spawned processes and Spark executors import it
from this module.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import warnings

# albumentations (imported by img2dataset's resizer below) would check PyPI for updates:
# curation/__init__.py, which always runs before this module, sets NO_ALBUMENTATIONS_UPDATE
from img2dataset.resizer import Resizer
from PIL import Image, UnidentifiedImageError

from curation.ingest_config import DEFAULT_MAX_PIXELS, HARD_MAX_PIXELS  # noqa: F401  (HARD_MAX_PIXELS re-exported)
from curation.reasons import own_error
from infra.contract import IngestReason

_BOMB_SIZE = re.compile(r"Image size \((\d+(?:x\d+)?) pixels\)")  # "(WxH pixels)" or "(N pixels)"


def inspect_image_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """None when the bytes are a complete image within the pixel limit, else an error message."""
    if len(data) == 0:
        return own_error(IngestReason.EMPTY_FILE, "0 bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as err:
            # Pillow names its own (2x) limit: report the size against the limit in force
            size = _BOMB_SIZE.search(str(err))
            found = f"{size.group(1)} pixels" if size else f"more than {HARD_MAX_PIXELS} pixels"
            return own_error(IngestReason.IMAGE_TOO_LARGE, f"{found} > limit {max_pixels}")
        except UnidentifiedImageError:
            head = data[:32].decode("latin-1").replace("\n", " ")
            return own_error(IngestReason.NOT_AN_IMAGE, f"unrecognised data starting {head!r}")
        except Exception as err:  # noqa: BLE001 - hostile bytes can raise anything
            return own_error(IngestReason.DECODE_ERROR, f"{type(err).__name__}: {err}"[:200])
        width, height = image.size
        if width * height > max_pixels:
            return own_error(IngestReason.IMAGE_TOO_LARGE, f"{width}x{height} pixels > limit {max_pixels}")
        try:
            if image.format == "JPEG":
                # reduced-size decode still reads every entropy-coded byte: truncation shows
                image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                image.load()
            else:
                image.verify()  # chunk structure and CRCs, without decompressing
        except Exception as err:  # noqa: BLE001
            return own_error(IngestReason.DECODE_ERROR, f"{type(err).__name__}: {err}"[:200])
    return None


class StrictResizer(Resizer):
    """Resizer that refuses what :func:`inspect_image_bytes` refuses, then resizes as usual."""

    max_pixels: int = DEFAULT_MAX_PIXELS

    def __call__(self, img_stream, blurring_bbox_list=None):
        error = inspect_image_bytes(img_stream.getvalue(), self.max_pixels)
        if error is not None:
            return None, None, None, None, None, error
        img_stream.seek(0)
        return super().__call__(img_stream, blurring_bbox_list)


@contextlib.contextmanager
def strict_resizing(max_pixels: int = DEFAULT_MAX_PIXELS):
    """Make img2dataset.download build a StrictResizer for the duration of the block."""

    def build(*args, **kwargs) -> StrictResizer:
        resizer = StrictResizer(*args, **kwargs)
        resizer.max_pixels = max_pixels  # instance attribute: pickled with the instance
        return resizer

    # the package re-exports a function named `main`, so fetch the module itself
    img2dataset_main = importlib.import_module("img2dataset.main")
    original = img2dataset_main.Resizer
    img2dataset_main.Resizer = build
    try:
        yield
    finally:
        img2dataset_main.Resizer = original
