"""Synthetic raw shards shaped like img2dataset's output, for benchmarks at any size.

    from bench.synthetic_shards import generate
    raw = generate(64_000, seed=0)   # -> bench/results/scale-data/v3-n64000-seed0 (cached)

Each shard ``SSSSS.tar`` (img2dataset's 5-digit names) holds 1,000 samples, each as
``KEY.jpg`` (real 64x64 JPEG bytes), ``KEY.txt`` and ``KEY.json`` (img2dataset's fields:
url, key, status, caption, width/height, original_width/original_height, sha256 of the
bytes), keys in img2dataset's 9-digit form (5 shard digits, 4 sample digits). Everything is a
function of (N, seed, :data:`GENERATOR_VERSION`); each shard has its own random stream
(``SeedSequence([seed, shard])``), so shards can be made in parallel and in any order.

What is planted, per sample and independently, so that every curation rule does work:

* images: 2,048 pool pictures (linear/radial gradients, stripes, smooth noise, rectangles
  and ellipses) are pre-made; a sample's picture is two pool pictures combined through one of
  256 shape masks, rolled and brightness-shifted, then JPEG-encoded at quality 70-95: distinct
  pixels (and pHashes), ~0.1 ms a sample. 4 % are exact copies of 512 "popular" images (the
  same bytes, other captions) and 2 % are one placeholder image (``image_too_many_texts``
  once it has > 1,000 alt-texts: from ~51k pairs on);
* original sizes (json): shorter side log-normal around 500 px, ~8 % <= 200 px
  (``too_small``); aspect mostly 1-2.5, 5 % between 3 and 6 (``aspect_ratio``);
* captions: words of a 50,000-word pseudo-word vocabulary drawn Zipf(1.4) (so rare
  uni/bigrams exist: ``text_rare_tokens``); 4 % have 1-2 words (``text_too_short``),
  7 % 21-40 and 0.5 % 65-80 (``text_too_many_words`` in each preset); 6 % are one of 40
  boilerplate phrases of 3-5 words (``text_too_common``); 0.2 % empty (``text_empty``),
  0.05 % without a ``.txt`` (``missing_text``);
* 0.1 % truncated JPEGs (``decode_error``), 0.2 % repeat the key of an earlier sample of the
  same or the previous shard (``duplicate_key``).

Generation streams (one sample in memory at a time, plus the pool: ~13 MB) into a temporary
folder renamed when complete, with ``DONE`` holding the parameters and the planted counts;
a folder without it is never used.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

GENERATOR_VERSION = 3
SAMPLES_PER_SHARD = 1000
SIDE = 64
POOL_SIZE = 2048
MASKS = 256
POPULAR = 512
VOCABULARY = 50_000
ZIPF_S = 1.4
DEFAULT_ROOT = Path(__file__).resolve().parent / "results" / "scale-data"  # bench/results/ is git-ignored

# shares of samples (independent draws)
P_PLACEHOLDER = 0.02
P_POPULAR = 0.04
P_CORRUPT = 0.001
P_DUP_KEY = 0.002
P_BOILERPLATE = 0.06
P_EMPTY = 0.002
P_NO_TEXT = 0.0005
P_BAD_ASPECT = 0.05

BOILERPLATE = [f"{a} {b}" for a in ("click here to", "image not found", "photo courtesy of the", "buy this item",
                                     "free shipping on all", "view larger image of", "no image available for",
                                     "copyright all rights reserved")
               for b in ("enlarge", "our shop", "full size", "more details", "the product page")]
_ONSETS = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
           "br", "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "sl", "st", "th", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "ie", "oo", "ou"]
_CODAS = ["", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "ck"]


def cache_dir(n: int, seed: int = 0, root: str | Path = DEFAULT_ROOT) -> Path:
    """Where the shards for (n, seed) at this generator version live."""
    return Path(root) / f"v{GENERATOR_VERSION}-n{n}-seed{seed}"


def img2dataset_key(shard: int, index: int) -> str:
    """img2dataset's key: 10**4 × shard + index, 9 digits (oom_shard_count 5, 4 sample digits)."""
    return f"{shard * 10_000 + index:09d}"


# ---------------------------------------------------------------- the per-seed assets


def _vocabulary(rng: np.random.Generator) -> list[str]:
    """Distinct pronounceable pseudo-words, shorter ones at the frequent ranks (so captions
    read like text to a language detector, and word length follows frequency as in real text)."""
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < VOCABULARY:
        syllables = 1 + min(3, int(rng.exponential(0.6 + 2.0 * len(words) / VOCABULARY)))
        word = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
                       + _CODAS[rng.integers(len(_CODAS))] for _ in range(syllables))
        if len(word) > 1 and word not in seen:
            seen.add(word)
            words.append(word)
    return words


def _pool(rng: np.random.Generator) -> np.ndarray:
    """(POOL_SIZE, 64, 64, 3) uint8 pictures of five kinds."""
    yy, xx = (np.mgrid[0:SIDE, 0:SIDE].astype(np.float32) + 0.5) / SIDE
    out = np.empty((POOL_SIZE, SIDE, SIDE, 3), np.uint8)
    for i in range(POOL_SIZE):
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        kind = i % 5
        if kind == 0:    # linear gradient
            angle = rng.uniform(0, 2 * np.pi)
            t = (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) / 1.42 + 0.5
        elif kind == 1:  # radial gradient
            cx, cy = rng.uniform(0, 1, 2)
            t = np.clip(np.hypot(xx - cx, yy - cy) / rng.uniform(0.3, 1.2), 0, 1)
        elif kind == 2:  # stripes
            angle, freq = rng.uniform(0, np.pi), rng.uniform(1, 8)
            t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 6.3))
        elif kind == 3:  # smooth noise
            cells = int(rng.integers(2, 9))
            small = Image.fromarray(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8))
            out[i] = np.asarray(small.resize((SIDE, SIDE), Image.BICUBIC))
            continue
        else:            # shapes on a background
            t = np.zeros((SIDE, SIDE), np.float32)
            for _ in range(int(rng.integers(2, 6))):
                x0, y0 = rng.uniform(0, 1, 2)
                w, h = rng.uniform(0.1, 0.5, 2)
                if rng.random() < 0.5:
                    inside = (np.abs(xx - x0) < w / 2) & (np.abs(yy - y0) < h / 2)
                else:
                    inside = ((xx - x0) / w) ** 2 + ((yy - y0) / h) ** 2 < 0.25
                t[inside] = rng.uniform(0.2, 1.0)
        out[i] = np.clip(c0 + (c1 - c0) * t[..., None], 0, 255).astype(np.uint8)
    return out


def _masks(rng: np.random.Generator) -> np.ndarray:
    """(MASKS, 64, 64, 1) bool shape masks (rectangles, ellipses, half-planes)."""
    yy, xx = (np.mgrid[0:SIDE, 0:SIDE].astype(np.float32) + 0.5) / SIDE
    out = np.empty((MASKS, SIDE, SIDE, 1), bool)
    for i in range(MASKS):
        x0, y0 = rng.uniform(0.1, 0.9, 2)
        w, h = rng.uniform(0.2, 0.8, 2)
        if i % 3 == 0:
            m = (np.abs(xx - x0) < w / 2) & (np.abs(yy - y0) < h / 2)
        elif i % 3 == 1:
            m = ((xx - x0) / w) ** 2 + ((yy - y0) / h) ** 2 < 0.25
        else:
            angle = rng.uniform(0, 2 * np.pi)
            m = np.cos(angle) * (xx - x0) + np.sin(angle) * (yy - y0) > 0
        out[i, ..., 0] = m
    return out


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=int(quality))
    return buffer.getvalue()


class _Assets:
    def __init__(self, seed: int):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
        self.words = _vocabulary(rng)
        weights = 1.0 / np.arange(1, VOCABULARY + 1) ** ZIPF_S
        self.cdf = np.cumsum(weights / weights.sum())
        self.pool = _pool(rng)
        self.masks = _masks(rng)
        self.popular = [self.picture(rng) for _ in range(POPULAR)]
        grey = np.full((SIDE, SIDE, 3), 200, np.uint8)
        grey[28:36, 8:56] = 120  # a "no image" bar
        self.placeholder = _jpeg(grey, 85)

    def picture(self, rng: np.random.Generator) -> bytes:
        """Two pool pictures through a mask, rolled and shifted: a new picture each call."""
        a, b = rng.integers(POOL_SIZE, size=2)
        mixed = np.where(self.masks[rng.integers(MASKS)], self.pool[a], self.pool[b]).astype(np.int16)
        mixed = np.roll(mixed, tuple(rng.integers(0, SIDE, 2)), axis=(0, 1)) + int(rng.integers(-30, 31))
        return _jpeg(np.clip(mixed, 0, 255).astype(np.uint8), rng.integers(70, 96))


@lru_cache(maxsize=2)
def _assets(seed: int) -> _Assets:
    return _Assets(seed)


# ---------------------------------------------------------------- samples and shards


def _caption(rng: np.random.Generator, assets: _Assets) -> str:
    roll = rng.random()
    if roll < P_BOILERPLATE:
        return BOILERPLATE[rng.integers(len(BOILERPLATE))]
    roll = rng.random()
    if roll < 0.04:
        length = rng.integers(1, 3)
    elif roll < 0.11:
        length = rng.integers(21, 41)
    elif roll < 0.115:
        length = rng.integers(65, 81)
    else:
        length = rng.integers(3, 17)
    ranks = np.searchsorted(assets.cdf, rng.random(length))
    words = [assets.words[min(r, VOCABULARY - 1)] for r in ranks]
    if rng.random() < 0.3:
        words[0] = words[0].capitalize()
    return " ".join(words)


def _original_size(rng: np.random.Generator) -> tuple[int, int]:
    short = max(16, int(round(np.exp(rng.normal(np.log(500), 0.65)))))
    if rng.random() < P_BAD_ASPECT:
        aspect = rng.uniform(3.0, 6.0)
    else:
        aspect = rng.choice([1.0, 4 / 3, 1.5, 16 / 9]) if rng.random() < 0.7 else rng.uniform(1.0, 2.5)
    long = int(round(short * aspect))
    return (long, short) if rng.random() < 0.6 else (short, long)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def samples(shard: int, size: int, seed: int = 0):
    """Yield (key, jpeg bytes, caption or None, meta dict, planted tags) for one shard."""
    assets = _assets(seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, shard + 1]))
    for index in range(size):
        tags = []
        key = img2dataset_key(shard, index)
        if rng.random() < P_DUP_KEY and (index > 0 or shard > 0):
            if index > 0 and (shard == 0 or rng.random() < 0.5):
                key = img2dataset_key(shard, int(rng.integers(index)))
            else:
                key = img2dataset_key(shard - 1, int(rng.integers(SAMPLES_PER_SHARD)))
            tags.append("duplicate_key")
        roll = rng.random()
        if roll < P_PLACEHOLDER:
            image = assets.placeholder
            tags.append("placeholder")
        elif roll < P_PLACEHOLDER + P_POPULAR:
            image = assets.popular[rng.integers(POPULAR)]
            tags.append("popular_copy")
        else:
            image = assets.picture(rng)
        sha = hashlib.sha256(image).hexdigest()
        if rng.random() < P_CORRUPT:
            image = image[: len(image) // 2]
            tags.append("corrupt")
        caption = _caption(rng, assets)
        roll = rng.random()
        if roll < P_EMPTY:
            caption = ""
            tags.append("empty_text")
        elif roll < P_EMPTY + P_NO_TEXT:
            caption = None
            tags.append("no_text")
        width, height = _original_size(rng)
        meta = {"url": f"https://img{shard % 97}.example.com/{key}/{index}.jpg", "key": key, "status": "success",
                "error_message": None, "caption": caption, "width": SIDE, "height": SIDE,
                "original_width": width, "original_height": height, "exif": None, "sha256": sha}
        yield key, image, caption, meta, tags


def write_shard(folder: Path, shard: int, size: int, seed: int = 0) -> dict[str, int]:
    """Shard ``shard`` as ``folder/SSSSS.tar``; returns the planted counts."""
    counts: dict[str, int] = {}
    with tarfile.open(folder / f"{shard:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, image, caption, meta, tags in samples(shard, size, seed):
            _add(tar, f"{key}.jpg", image)
            if caption is not None:
                _add(tar, f"{key}.txt", caption.encode("utf-8"))
            _add(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
            for tag in tags:
                counts[tag] = counts.get(tag, 0) + 1
            counts["too_small_original"] = counts.get("too_small_original", 0) + (
                min(meta["original_width"], meta["original_height"]) <= 200)
    return counts


def _write_one(job) -> dict[str, int]:
    folder, shard, size, seed = job
    return write_shard(Path(folder), shard, size, seed)


def generate(n: int, seed: int = 0, root: str | Path = DEFAULT_ROOT, jobs: int = 1) -> Path:
    """``n`` synthetic pairs as raw shards, cached: the folder (made now unless already complete)."""
    folder = cache_dir(n, seed, root)
    if (folder / "DONE").exists():
        return folder
    partial = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    work = [(str(partial), s, min(SAMPLES_PER_SHARD, n - s * SAMPLES_PER_SHARD), seed)
            for s in range((n + SAMPLES_PER_SHARD - 1) // SAMPLES_PER_SHARD)]
    totals: dict[str, int] = {}
    if jobs > 1 and len(work) > 1:
        with ProcessPoolExecutor(jobs) as pool:
            results = list(pool.map(_write_one, work, chunksize=4))
    else:
        results = [_write_one(job) for job in work]
    for counts in results:
        for tag, count in counts.items():
            totals[tag] = totals.get(tag, 0) + count
    (partial / "DONE").write_text(json.dumps({"pairs": n, "seed": seed, "generator_version": GENERATOR_VERSION,
                                              "shards": len(work), "planted": dict(sorted(totals.items()))},
                                             indent=2) + "\n")
    if folder.exists():  # an older incomplete attempt
        shutil.rmtree(folder)
    os.replace(partial, folder)
    return folder


def planted(folder: Path) -> dict:
    """The parameters and planted counts recorded with a generated folder."""
    return json.loads((Path(folder) / "DONE").read_text())


__all__ = ["GENERATOR_VERSION", "SAMPLES_PER_SHARD", "cache_dir", "generate", "img2dataset_key", "planted",
           "samples", "write_shard"]
