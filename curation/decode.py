"""Safe image decoding for curation: Pillow with a pixel limit, odd modes made plain.

A plain JPEG decoded only for its pHash (``draft`` given) is decoded by
:mod:`dedup.jpeg_grey` instead: the same grey pixels, without Pillow's Python-level marker
parsing, which cost more than the decode on small images. Whatever that declines (damaged
data, other formats, odd modes) comes here, so every rejection is still Pillow's.

Modes: RGB and L pass as they are; alpha (RGBA, LA, PA, P with transparency) is matted onto
white, as img2dataset does; P, CMYK, YCbCr, 1 become RGB or L; 16-bit and 32-bit grey are
scaled to 8 bits; animated images keep their first frame. Anything else is rejected as
``unsupported_image``. Truncated data is an error (Pillow's LOAD_TRUNCATED_IMAGES stays off).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from dedup.jpeg_grey import jpeg_grey
from dedup.phash import flatten_on_white, grey_pixels, has_alpha


class ImageRejected(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass
class DecodedImage:
    image: Image.Image | None  # mode RGB or L, first frame (reduced in size when ``reduced``); None
                               # when only ``grey`` was decoded (a plain JPEG, dedup.jpeg_grey)
    size: tuple[int, int]   # the image's real size (from its header)
    format: str | None      # what the bytes were: JPEG, PNG, ...
    source_mode: str
    converted: bool         # True when the output must be re-encoded (not plain JPEG RGB/L)
    reduced: bool = False   # decoded at a JPEG DCT scale (``draft``), not full size
    grey: np.ndarray | None = None  # when ``reduced``: the grey pixels pHash reads (Pillow's RGB -> L)


def _plain(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in ("RGB", "L"):
        return image
    if has_alpha(image):
        return flatten_on_white(image)
    if mode in ("P", "CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I;16") or mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(np.round(array * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")
    raise ImageRejected("unsupported_image", f"image mode {mode} is not supported")


def decode_image(data: bytes | None, max_pixels: int, draft: int | None = None) -> DecodedImage:
    """Decode and check an image. With ``draft``, a plain JPEG (RGB or L) that will be kept
    as it is is decoded at the smallest DCT scale whose sides stay >= ``draft`` — the same
    reduced decode the pHash settings use, and still a read of every entropy-coded byte, so
    truncation is still caught — instead of at full size; such an image comes with its
    ``grey`` pixels, and (when :mod:`dedup.jpeg_grey` decoded it) without ``image``."""
    if data is None:
        raise ImageRejected("missing_image", "no image in the sample")
    if not data:
        raise ImageRejected("decode_error", "0 bytes")
    if draft:
        fast = jpeg_grey(data, draft, max_pixels)
        if fast is not None:
            return DecodedImage(None, fast.size, "JPEG", fast.mode, converted=False, reduced=True, grey=fast.grey)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning, palette warnings: we decide
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as err:
            raise ImageRejected("image_too_large", str(err)[:200]) from None
        except UnidentifiedImageError:
            raise ImageRejected("decode_error", "not a recognised image format") from None
        except Exception as err:  # noqa: BLE001 - hostile bytes can raise anything
            raise ImageRejected("decode_error", f"{type(err).__name__}: {err}"[:200]) from None
        width, height = image.size
        if width * height > max_pixels:
            raise ImageRejected("image_too_large", f"{width}x{height} pixels > limit {max_pixels}")
        source_format, source_mode = image.format, image.mode
        animated = getattr(image, "n_frames", 1) > 1
        reduced = bool(draft) and source_format == "JPEG" and source_mode in ("RGB", "L") and not animated
        try:
            if reduced:
                image.draft(source_mode, (draft, draft))
            image.seek(0)
            image.load()
            plain = _plain(image)
        except ImageRejected:
            raise
        except Exception as err:  # noqa: BLE001
            raise ImageRejected("decode_error", f"{type(err).__name__}: {err}"[:200]) from None
    converted = animated or source_format != "JPEG" or plain is not image
    grey = grey_pixels(plain) if reduced else None
    return DecodedImage(plain, (width, height), source_format, source_mode, converted, reduced, grey)


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()
