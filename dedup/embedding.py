"""The embedding check: nearest eval image by cosine, confirmed above a calibrated threshold.

pHash misses crops, padding and rotations; the locked image tower's embeddings (computed once
per image by training's embedding pass) do not. The check is written against a plain
``embed(images: list[PIL.Image]) -> np.ndarray`` (N x D, float) so that any tower plugs in;
vectors are L2-normalised here, so cosine is a dot product and a search over the eval set is
one matrix product per chunk of corpus vectors.

Flags, not rewrites: :func:`flag_duplicates` returns a table (corpus key -> eval set, split,
key, cosine) that training reads to skip those pairs and the report shows; the shards are left
as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

Embed = Callable[[Sequence], np.ndarray]


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim == 2 and len(vectors) == 0:
        return vectors
    if vectors.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (N x D), got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("an embedding is all zeros: cannot normalise")
    return vectors / norms


def embed_all(embed: Embed, images: Sequence, batch: int = 64) -> np.ndarray:
    """Run ``embed`` over images in batches; returns L2-normalised float32 (N x D)."""
    parts = [np.asarray(embed(list(images[i:i + batch]))) for i in range(0, len(images), batch)]
    if not parts:
        raise ValueError("no images to embed")
    return l2_normalise(np.concatenate(parts))


@dataclass
class EmbeddingIndex:
    """Eval-image embeddings (L2-normalised) with (eval_set, split, key) per row."""

    vectors: np.ndarray
    eval_set: list[str]
    split: list[str]
    key: list[str]

    def __post_init__(self):
        self.vectors = l2_normalise(self.vectors)
        if not (len(self.vectors) == len(self.eval_set) == len(self.split) == len(self.key)):
            raise ValueError("embedding index: vectors and labels differ in length")

    def nearest(self, queries: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Index and cosine of each query's nearest eval image."""
        queries = l2_normalise(queries)
        if queries.shape[1] != self.vectors.shape[1]:
            raise ValueError(f"embedding sizes differ: corpus {queries.shape[1]} vs eval {self.vectors.shape[1]}")
        best_i, best_c = [], []
        for start in range(0, len(queries), chunk):
            sims = queries[start:start + chunk] @ self.vectors.T
            i = sims.argmax(axis=1)
            best_i.append(i)
            best_c.append(sims[np.arange(len(i)), i])
        return np.concatenate(best_i), np.concatenate(best_c)


def flag_duplicates(corpus_keys: Sequence[str], corpus_vectors: np.ndarray, index: EmbeddingIndex,
                    threshold: float) -> pd.DataFrame:
    """Corpus pairs whose nearest eval image has cosine >= threshold (for training to skip)."""
    i, cos = index.nearest(corpus_vectors)
    hit = np.flatnonzero(cos >= threshold)
    return pd.DataFrame({
        "key": [corpus_keys[h] for h in hit],
        "eval_set": [index.eval_set[i[h]] for h in hit],
        "eval_split": [index.split[i[h]] for h in hit],
        "eval_key": [index.key[i[h]] for h in hit],
        "cosine": cos[hit].astype(np.float32),
    })


def calibrate_threshold(negative_cosines: np.ndarray, max_false_positive_rate: float) -> float:
    """The smallest threshold whose false-positive rate over distinct-image pairs is <= the target.

    Taken from the negatives only (the quantile), so it does not depend on the edits it is then
    tested against; ``bench/bench_dedup_quality.py`` reports the recall it gives.
    """
    negatives = np.sort(np.asarray(negative_cosines, np.float64))
    if len(negatives) == 0:
        raise ValueError("no negative pairs to calibrate on")
    allowed = int(np.floor(max_false_positive_rate * len(negatives)))
    # threshold just above the (allowed+1)-th largest negative
    return float(np.nextafter(negatives[len(negatives) - allowed - 1], np.inf))


# ---- the real locked tower (training/), imported only when used -------------------------------


def tower_embedder(name: str = "efficientnet-lite0") -> Embed:
    """``embed(images)`` with training's image tower ``name`` and its own preprocessing."""
    import torch

    from training.image_towers import build_image_tower

    tower = build_image_tower(name)

    def embed(images):
        batch = torch.from_numpy(np.stack([tower.preprocess(image) for image in images]))
        with torch.no_grad():
            return tower.encode(batch).float().numpy()

    embed.tower = tower  # type: ignore[attr-defined]
    return embed


def eval_embedding_index(embed: Embed, index_dir, mode: str = "train+test", batch: int = 64) -> EmbeddingIndex:
    """Embed every readable eval image of an eval index (``litflow dedup index`` output)."""
    import io
    import json
    from pathlib import Path

    import pyarrow.parquet as pq
    from PIL import Image

    from dedup.evalsets import read_ref

    manifest = json.loads((Path(index_dir) / "index.json").read_text())
    sets, splits, keys, images = [], [], [], []
    for set_name, info in sorted(manifest["sets"].items()):
        for split, split_info in sorted(info["splits"].items()):
            if mode == "none" or (mode == "test" and split_info["role"] != "test"):
                continue
            table = pq.read_table(Path(index_dir) / split_info["file"], columns=["key", "ref", "error"]).to_pylist()
            for row in table:
                if row["error"] is None:
                    sets.append(set_name)
                    splits.append(split)
                    keys.append(row["key"])
                    images.append(Image.open(io.BytesIO(read_ref(row["ref"]))))
    return EmbeddingIndex(embed_all(embed, images, batch), sets, splits, keys)


def flag_cached_corpus(cache, shards, index: EmbeddingIndex, threshold: float):
    """Flags for every curated shard from training's embedding cache (no image is re-embedded).

    ``cache`` is a ``training.embed_cache.EmbeddingCache``; returns one frame (with ``shard``)
    for ``eval_flags.parquet``, which training reads to skip those keys.
    """
    frames = []
    for shard in shards:
        vectors, keys = cache.load(shard)
        frame = flag_duplicates(keys, np.asarray(vectors, np.float32), index, threshold)
        frames.append(frame.assign(shard=str(shard)))
    return pd.concat(frames, ignore_index=True) if frames else flag_duplicates([], np.zeros((0, index.vectors.shape[1])), index, threshold)
