"""Eval images → tower features, every image checked, with an optional on-disk feature cache.

Images are read through the eval-set registry's readers (:mod:`dedup.evalsets`); a missing or
undecodable image is an error that lists every bad image of the split (not just the first),
since an evaluation on a silently smaller set would report a number for another set.

Cache: ``CACHE/<fingerprint16>/<set>__<split>-<digest16>.npy`` where the fingerprint names the
image tower as used (pretrained weights for a locked tower, trained weights otherwise) and its
preprocessing, and the digest covers the keys and image bytes. A locked tower's features of an
eval set are therefore computed once for every locked-image (``L?``) model that shares it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dedup.evalsets import EvalItem, MalformedEvalSet
from training.image_towers import Preprocess
from infra.files import replacing


def read_images(items: list[EvalItem], where: str) -> tuple[list[bytes], str]:
    """Every item's bytes and a digest of (key, bytes); all unreadable images named in one error."""
    blobs, bad = [], []
    digest = hashlib.sha256()
    for item in items:
        try:
            data = item.read()
        except (OSError, KeyError) as err:
            bad.append(f"{item.key} ({item.ref}: {type(err).__name__}: {err})")
            continue
        if not data:
            bad.append(f"{item.key} ({item.ref}: empty file)")
            continue
        blobs.append(data)
        digest.update(item.key.encode() + b"\0" + hashlib.sha256(data).digest())
    if bad:
        raise MalformedEvalSet(f"{where}: {len(bad)} of {len(items)} image(s) missing or unreadable: "
                               + "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))
    return blobs, digest.hexdigest()


def decode_images(items: list[EvalItem], blobs: list[bytes], preprocess: Preprocess, where: str) -> torch.Tensor:
    arrays, bad = [], []
    for item, data in zip(items, blobs):
        try:
            arrays.append(preprocess.decode(data))
        except Exception as err:  # Pillow raises many types for broken files
            bad.append(f"{item.key} ({type(err).__name__}: {err})")
    if bad:
        raise MalformedEvalSet(f"{where}: {len(bad)} image(s) do not decode: " + "; ".join(bad[:5]))
    return torch.from_numpy(np.stack(arrays))


def image_features(items: list[EvalItem], where: str, preprocess: Preprocess, fingerprint: str,
                   compute: Callable[[torch.Tensor], torch.Tensor], cache_dir: str | Path | None = None,
                   chunk: int = 256) -> tuple[torch.Tensor, dict]:
    """(N, D) tower features of ``items`` (cached when ``cache_dir``); and what was done."""
    blobs, digest = read_images(items, where)
    path = None
    if cache_dir is not None:
        safe = where.replace("/", "_").replace(" ", "_").replace("'", "")
        path = Path(cache_dir) / fingerprint[:16] / f"{safe}-{digest[:16]}.npy"
        if path.exists():
            features = np.load(path)
            if features.shape[0] == len(items):
                return torch.from_numpy(features), {"digest": digest, "cache": str(path), "cached": True}
    parts = []
    for start in range(0, len(items), chunk):  # decode in chunks: a big set never sits in memory as pixels
        pixels = decode_images(items[start:start + chunk], blobs[start:start + chunk], preprocess, where)
        parts.append(compute(pixels).float())
    features = torch.cat(parts)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp, open(tmp, "wb") as handle:
            np.save(handle, features.numpy())
    return features, {"digest": digest, "cache": str(path) if path else None, "cached": False}
