"""64-bit perceptual hashes, value-compatible with ``imagehash.phash``, computed in batches.

The curation pipeline calls these (stable signatures):

* :func:`phash64` ``(image) -> int`` — exactly ``int(str(imagehash.phash(image)), 16)``: the
  same grey conversion, the same 32×32 Lanczos resize, the same ``scipy.fftpack`` DCT-II, the
  same median threshold over the 8×8 low frequencies, and the same bit order (the first
  coefficient, row-major, is the most significant bit).
* :func:`phash64_batch` ``(images) -> np.ndarray[uint64]`` — the same, with the DCTs done as
  one batched call (imagehash does two ``dct`` calls per image; batching removes the
  per-image Python/SciPy overhead, which was most of the hashing cost after the resize).
* :func:`hash_image_bytes` ``(data, settings) -> (phash, mirror_phash)`` — from encoded bytes
  (transparent images flattened on white first, like img2dataset does to the corpus),
  with a reduced JPEG decode (``Image.draft``) when ``settings.jpeg_draft`` is set: the
  JPEG decoder's DCT scaling skips most of the decode work when the image is only going to be
  shrunk to 32×32 anyway. This changes the pixels that reach the resize slightly, so the hash
  can differ from the full decode by a few bits; ``bench/bench_dedup_quality.py`` and
  ``tests/test_dedup_phash.py`` measure and bound it.
  A plain JPEG is decoded by :mod:`dedup.jpeg_grey` (libjpeg-turbo without Pillow's Python
  marker parsing; the same pixels, tested), anything else by Pillow.

The second signal is the hash of the horizontal mirror. It is computed from the *same* DCT
(no second resize): mirroring a row reverses it, and the DCT-II of a reversed sequence is the
original with the sign of every odd frequency flipped, so only the threshold step is redone.

Hash settings (:class:`HashSettings`) are recorded with every index and every corpus; comparing
hashes made with different settings is a loud error (:func:`check_same_settings`).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np
import scipy.fftpack
from PIL import Image

from dedup.jpeg_grey import jpeg_grey
from dedup.lanczos import resize_grey, resize_grey_many

# imagehash's defaults: an 8x8 hash from a 32x32 image
HASH_SIZE = 8
HIGHFREQ_FACTOR = 4
IMG_SIZE = HASH_SIZE * HIGHFREQ_FACTOR
_BIT_WEIGHTS = np.left_shift(np.uint64(1), np.arange(63, -1, -1, dtype=np.uint64))
# DCT-II of a reversed sequence: X'[k] = (-1)^k X[k]; applied along the horizontal axis
_MIRROR_SIGN = np.tile(np.where(np.arange(HASH_SIZE) % 2 == 0, 1.0, -1.0), (HASH_SIZE, 1)).reshape(-1)


@dataclass(frozen=True)
class HashSettings:
    """Everything that changes a hash value. Stored with indexes and corpora, compared on use.

    ``jpeg_draft``: when set, JPEG input is decoded at the smallest DCT scale (1/2, 1/4, 1/8)
    whose shorter side is still >= this many pixels; ``None`` = full decode.
    ``flatten_alpha``: images with transparency are composited on white before hashing, as
    img2dataset's resizer does to every corpus image (imagehash's ``convert('L')`` would instead
    read the colour under transparent pixels, so an eval PNG and its own corpus copy would differ).
    """

    algorithm: str = "phash"
    hash_size: int = HASH_SIZE
    highfreq_factor: int = HIGHFREQ_FACTOR
    jpeg_draft: int | None = 64
    flatten_alpha: bool = True

    @property
    def id(self) -> str:
        draft = f"draft{self.jpeg_draft}" if self.jpeg_draft else "fulldecode"
        alpha = "-onwhite" if self.flatten_alpha else ""
        return f"{self.algorithm}-{self.hash_size}x{self.highfreq_factor}-{draft}{alpha}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "HashSettings":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown hash settings {sorted(unknown)} (written by a newer litflow?)")
        return cls(**data)


DEFAULT_SETTINGS = HashSettings()


class HashSettingsMismatch(ValueError):
    """Corpus and eval index were hashed with different settings: distances would be meaningless."""


def check_same_settings(corpus: HashSettings, index: HashSettings, where: str = "") -> None:
    if corpus != index:
        diff = {k: (v, getattr(index, k)) for k, v in corpus.to_dict().items() if getattr(index, k) != v}
        raise HashSettingsMismatch(
            f"hash settings differ{(' ' + where) if where else ''}: corpus {corpus.id} vs eval index "
            f"{index.id} ({', '.join(f'{k}: {a!r} != {b!r}' for k, (a, b) in diff.items())}); "
            "re-index the eval sets with the corpus's settings (litflow dedup index --jpeg-draft ...)"
        )
    if corpus.algorithm != "phash" or corpus.hash_size != HASH_SIZE:
        raise ValueError(f"only 64-bit phash is supported, got {corpus.id}")


def grey_pixels(image: Image.Image) -> np.ndarray:
    """imagehash's grey conversion (Pillow's RGB -> L), as a (height, width) uint8 array."""
    return np.asarray(image.convert("L"))


def hash_pixels(image: Image.Image, settings: HashSettings = DEFAULT_SETTINGS) -> np.ndarray:
    """imagehash's preprocessing: grey, then resize to 32x32 with Lanczos (uint8 array; Pillow's
    resize to the byte, without its per-call filter set-up: :mod:`dedup.lanczos`)."""
    return resize_grey(grey_pixels(image), settings.hash_size * settings.highfreq_factor)


def phashes_from_grey(images: Sequence[np.ndarray], settings: HashSettings = DEFAULT_SETTINGS) -> np.ndarray:
    """phash of each :func:`grey_pixels` array, resized in batches of one shape
    (:func:`dedup.lanczos.resize_grey_many`) and transformed in one batched DCT."""
    if len(images) == 0:
        return np.zeros(0, np.uint64)
    return phashes_from_pixels(resize_grey_many(list(images), settings.hash_size * settings.highfreq_factor))


def _low_dct(pixels: np.ndarray, hash_size: int = HASH_SIZE) -> np.ndarray:
    """(B, 32, 32) pixels -> (B, 64) low-frequency DCT coefficients, row-major.

    scipy.fftpack's DCT-II (imagehash's own), so values match it bit for bit.
    """
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=1), axis=2)
    return dct[:, :hash_size, :hash_size].reshape(len(pixels), hash_size * hash_size)


def _threshold(coefficients: np.ndarray) -> np.ndarray:
    """imagehash's rule: bit = coefficient > median of the 64; packed MSB-first into uint64.

    The median is np.median's own value — the mean of the 32nd and 33rd smallest, found by
    one partial sort — at a quarter of np.median's cost on 64 values (its generic path was a
    quarter of curation's examine time); ``tests/test_dedup_phash.py`` checks it equal."""
    middle = np.partition(coefficients, (31, 32), axis=1)
    median = (middle[:, 31:32] + middle[:, 32:33]) / 2
    return np.packbits(coefficients > median, axis=1).view(">u8").astype(np.uint64).ravel()


def hashes_from_pixels(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, 32, 32) grey pixels -> (phash, mirror phash) as two uint64 arrays."""
    if len(pixels) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    coefficients = _low_dct(np.asarray(pixels))
    return _threshold(coefficients), _threshold(coefficients * _MIRROR_SIGN)


def phashes_from_pixels(pixels: np.ndarray) -> np.ndarray:
    """(B, 32, 32) grey pixels -> phash only (no mirror threshold)."""
    if len(pixels) == 0:
        return np.zeros(0, np.uint64)
    return _threshold(_low_dct(np.asarray(pixels)))


def phash64(image: Image.Image) -> int:
    """imagehash.phash(image) as an unsigned 64-bit int (first bit = most significant)."""
    return int(phash64_batch([image])[0])


def phash64_batch(images: Sequence[Image.Image]) -> np.ndarray:
    """phash64 of each image, as a uint64 array (one batched DCT)."""
    if len(images) == 0:
        return np.zeros(0, np.uint64)
    return phashes_from_pixels(np.stack([hash_pixels(im) for im in images]))


def mirror_phash64(image: Image.Image) -> int:
    """pHash of the horizontally mirrored image, from the image's own DCT (see module doc)."""
    return int(hashes_from_pixels(hash_pixels(image)[None])[1][0])


def open_for_hash(data: bytes, settings: HashSettings = DEFAULT_SETTINGS) -> Image.Image:
    """Decode encoded image bytes, reduced (JPEG draft) where the settings ask for it.

    Raises what Pillow raises for bad bytes (``PIL.UnidentifiedImageError``, ``OSError``,
    ``Image.DecompressionBombError``); callers count those as unreadable.
    """
    image = Image.open(io.BytesIO(data))
    if settings.jpeg_draft and image.format == "JPEG":
        # keep the colour mode: a grey draft ('L' straight from the Y channel) differs from
        # Pillow's RGB->L conversion, which measured up to 20 bits off instead of 6
        image.draft(image.mode, (settings.jpeg_draft, settings.jpeg_draft))
    image.load()
    return flatten_on_white(image) if settings.flatten_alpha else image


def grey_for_hash(data: bytes, settings: HashSettings = DEFAULT_SETTINGS) -> np.ndarray:
    """``grey_pixels(open_for_hash(data, settings))``: for a plain JPEG decoded by
    :mod:`dedup.jpeg_grey` (the same pixels, without Pillow's Python marker parsing), else by
    Pillow. Raises what :func:`open_for_hash` raises."""
    fast = jpeg_grey(data, settings.jpeg_draft)
    return fast.grey if fast is not None else grey_pixels(open_for_hash(data, settings))


def _hash_grid(data: bytes, settings: HashSettings) -> np.ndarray:
    """Encoded bytes -> the 32x32 grey pixels the DCT reads."""
    return resize_grey(grey_for_hash(data, settings), settings.hash_size * settings.highfreq_factor)


def has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)


def flatten_on_white(image: Image.Image) -> Image.Image:
    """Transparent pixels composited on white (as img2dataset does); an opaque image as it is.

    The one place litflow puts transparency on white: curation's decode, the hashes, the
    audit page's thumbnails and the towers' preprocessing all call it, so they agree."""
    if has_alpha(image):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image


def hash_image_bytes(data: bytes, settings: HashSettings = DEFAULT_SETTINGS) -> tuple[int, int]:
    """(phash, mirror phash) of encoded image bytes under ``settings``."""
    ph, mirror = hashes_from_pixels(_hash_grid(data, settings)[None])
    return int(ph[0]), int(mirror[0])


def hash_many_bytes(blobs: Iterable[bytes], settings: HashSettings = DEFAULT_SETTINGS,
                    batch: int = 512) -> Iterable[tuple[int, int] | Exception]:
    """Hash encoded images in batches; yields (phash, mirror) or the decode exception, in order."""
    pending: list[np.ndarray | Exception] = []

    def flush():
        arrays = [p for p in pending if not isinstance(p, Exception)]
        if arrays:
            ph, mi = hashes_from_pixels(np.stack(arrays))
        it = iter(range(len(arrays)))
        for item in pending:
            if isinstance(item, Exception):
                yield item
            else:
                i = next(it)
                yield int(ph[i]), int(mi[i])
        pending.clear()

    for data in blobs:
        try:
            pending.append(_hash_grid(data, settings))
        except Exception as err:  # noqa: BLE001 - decode errors are data, reported by the caller
            pending.append(err)
        if len(pending) >= batch:
            yield from flush()
    yield from flush()


def hamming(a: int | np.ndarray, b: int | np.ndarray) -> int | np.ndarray:
    """Number of differing bits between 64-bit hashes (ints or uint64 arrays)."""
    if isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer)):
        return (int(a) ^ int(b)).bit_count()
    return np.bitwise_count(np.asarray(a, np.uint64) ^ np.asarray(b, np.uint64))


def to_signed(value: int) -> int:
    """uint64 -> int64 bit pattern (for stores that have no unsigned 64-bit type)."""
    return value - (1 << 64) if value >= (1 << 63) else value
