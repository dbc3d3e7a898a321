"""The decode gate in front of img2dataset's resizer."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from curation.ingest_config import DEFAULT_MAX_PIXELS, HARD_MAX_PIXELS
from curation.reasons import classify_error
from curation.strict_resizer import inspect_image_bytes
from infra.contract import IngestReason


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def real_image(demo_data):
    return Image.open(demo_data.cache / "emoji/img/google/64/1f600.png").convert("RGB").resize((300, 200))


def reason_of(data: bytes, **kwargs) -> IngestReason | None:
    message = inspect_image_bytes(data, **kwargs)
    return None if message is None else classify_error(message)


def test_valid_images_pass(real_image):
    for fmt in ("JPEG", "PNG", "WEBP", "GIF"):
        assert reason_of(encoded(real_image, fmt)) is None, fmt


def test_pixel_limit_boundary(real_image):
    data = encoded(real_image, "PNG")  # 300 x 200 = 60,000 pixels
    assert reason_of(data, max_pixels=60_000) is None
    assert reason_of(data, max_pixels=59_999) is IngestReason.IMAGE_TOO_LARGE


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height (RGB) and holds one empty row: what a bomb's header says."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height", [
    (10_000, 8_948),   # 89,480,000: just past the default limit, under Pillow's own 2x refusal
    (15_000, 11_930),  # 178,950,000: still under Pillow's 2x
    (20_000, 10_000),  # 200,000,000: past Pillow's 2x, which refuses it itself
])
def test_images_past_the_limit_are_refused_naming_the_limit_in_force(width, height):
    message = inspect_image_bytes(png_header(width, height))
    assert classify_error(message) is IngestReason.IMAGE_TOO_LARGE
    # Pillow's own refusal gives only the pixel count
    assert (f"{width}x{height} pixels > limit {DEFAULT_MAX_PIXELS}" in message
            or f"{width * height} pixels > limit {DEFAULT_MAX_PIXELS}" in message)
    assert str(HARD_MAX_PIXELS) not in message
    smaller = inspect_image_bytes(png_header(width, height), max_pixels=50_000_000)
    assert "> limit 50000000" in smaller


def test_an_image_at_the_limit_is_not_refused_for_its_size():
    at_limit = png_header(9_459, 9_459)  # 89,472,681 <= 89,478,485
    assert classify_error(inspect_image_bytes(at_limit)) is not IngestReason.IMAGE_TOO_LARGE


def test_a_limit_pillow_cannot_honour_is_refused_when_configured():
    from curation.ingest import IngestConfig

    IngestConfig(max_pixels=HARD_MAX_PIXELS)
    with pytest.raises(ValueError, match="max_pixels"):
        IngestConfig(max_pixels=HARD_MAX_PIXELS + 1)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_images_are_decode_errors(real_image, fmt):
    data = encoded(real_image, fmt)
    assert reason_of(data[: len(data) * 2 // 3]) is IngestReason.DECODE_ERROR


def test_empty_and_non_images(real_image):
    assert reason_of(b"") is IngestReason.EMPTY_FILE
    assert reason_of(b"<html><body>404</body></html>") is IngestReason.NOT_AN_IMAGE
    assert reason_of(b"\xff\xd8\xff" + b"\x00" * 20) is not None  # a JPEG header and nothing else


@pytest.mark.parametrize(
    "message, reason",
    [
        ("HTTP Error 404: Not Found", IngestReason.HTTP_404),
        ("HTTP Error 403: Forbidden", IngestReason.HTTP_403),
        ("HTTP Error 503: Service Unavailable", IngestReason.HTTP_5XX),
        ("HTTP Error 429: Too Many Requests", IngestReason.HTTP_429),
        ("HTTP Error 418: I'm a teapot", IngestReason.HTTP_ERROR),
        ("<urlopen error [Errno 111] Connection refused>", IngestReason.CONNECTION_REFUSED),
        ("<urlopen error timed out>", IngestReason.TIMEOUT),
        ("The read operation timed out", IngestReason.TIMEOUT),
        ("<urlopen error [Errno -2] Name or service not known>", IngestReason.DNS_FAILURE),
        ("Use of image disallowed by X-Robots-Tag directive", IngestReason.ROBOTS_DISALLOWED),
        ("Image decoding error", IngestReason.DECODE_ERROR),
        ("image area too large", IngestReason.IMAGE_TOO_LARGE),
        ("something nobody has seen", IngestReason.OTHER),
        (None, IngestReason.OTHER),
    ],
)
def test_img2dataset_messages_map_to_reasons(message, reason):
    assert classify_error(message) is reason
