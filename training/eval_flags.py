"""``litflow dedup flag``: the embedding check over a curated corpus, written for training.

Reads the locked tower's embeddings of every corpus pair from training's cache (computed once by
``litflow embed``), embeds the eval images with the same tower, proposes each pair's nearest
eval images and verifies them (:mod:`dedup.embedding`, :mod:`dedup.verify`). Lives in training
because it needs training's locked tower and cache; the search and verification are dedup's. Writes:

* ``eval_flags.parquet`` — the flagged pairs only (confirmed, or undecided): training's
  exclusion list (``litflow train --exclude``), so nothing is rewritten;
* ``eval_candidates.parquet`` — every candidate with its verification, for the audit report
  (``litflow dedup report --candidates``);
* ``flags.json`` — settings and counts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from curation.corpus_reader import shard_paths
from curation.shards import read_shard
from dedup.embedding import Embed, EmbeddingIndex, embedding_candidates, verify_candidates
from dedup.evalsets import image_member
from infra.contract import write_matches


def tower_embedder(name: str = "efficientnet-lite0", fit: str = "crop", fill=(255, 255, 255)) -> Embed:
    """``embed(images)`` with training's image tower ``name`` and its preprocessing (``fit``/``fill``
    as the cache was made: :class:`training.image_towers.Preprocess`)."""
    import torch

    from training.image_towers import build_image_tower  # torch: imported only when used

    tower = build_image_tower(name, fit=fit, fill=fill)

    def embed(images):
        batch = torch.from_numpy(np.stack([tower.preprocess(image) for image in images]))
        with torch.no_grad():
            return tower.encode(batch).float().numpy()

    embed.tower = tower  # type: ignore[attr-defined]
    return embed


def flag_cached_corpus(cache, shards, index: EmbeddingIndex, verifier, top_k: int = 3,
                       min_cosine: float = 0.5) -> pd.DataFrame:
    """Verified embedding candidates for every curated shard, from training's embedding cache.

    ``cache`` is a ``training.embed_cache.EmbeddingCache``: no image is re-embedded, and only the
    candidates' images are read back from the shards for verification. Returns every candidate
    (with ``shard``); the ``flagged`` rows are what ``eval_flags.parquet`` holds for training.
    """
    frames = []
    for shard in shards:
        vectors, keys = cache.load(shard)
        candidates = embedding_candidates(keys, np.asarray(vectors, np.float32), index, top_k, min_cosine)
        wanted = set(candidates["key"])
        images = {}
        if wanted:
            for sample in read_shard(shard):
                if sample["__key__"] in wanted:
                    ext = image_member(sample)
                    images[sample["__key__"]] = sample[ext] if ext else b""
        frames.append(verify_candidates(candidates, images, index, verifier).assign(shard=str(shard)))
    if not frames:
        return verify_candidates(embedding_candidates([], np.zeros((0, index.vectors.shape[1])), index), {}, index,
                                 verifier).assign(shard=[])
    return pd.concat(frames, ignore_index=True)


def flag_corpus(corpus: str | Path, cache_root: str | Path, index_dir: str | Path, out: str | Path,
                image_tower: str = "efficientnet-lite0", mode: str = "train+test", top_k: int = 3,
                min_cosine: float = 0.5, image_fit: str = "crop", image_fill=(255, 255, 255)) -> dict:
    from dedup.embedding import eval_embedding_index
    from dedup.feature_store import FeatureStore
    from dedup.verify import Verifier
    from training.embed_cache import open_cache

    if mode not in ("test", "train+test"):
        raise ValueError(f"mode must be test or train+test, not {mode!r}")
    shards = shard_paths(Path(corpus))  # raises when there are none
    embed = tower_embedder(image_tower, image_fit, image_fill)
    cache = open_cache(cache_root, embed.tower)
    index = eval_embedding_index(embed, index_dir, mode, fingerprint=embed.tower.fingerprint)
    verifier = Verifier(stored=FeatureStore(index_dir))
    candidates = flag_cached_corpus(cache, shards, index, verifier, top_k, min_cosine)
    flagged = candidates[candidates["flagged"]].drop(columns=["eval_image"])
    flagged_keys = set(flagged["key"])
    confirmed_keys = set(candidates.loc[candidates["confirmed"], "key"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_matches(flagged, out / "eval_flags.parquet")  # infra.contract' schema, then rank, inliers, shard
    write_matches(candidates.drop(columns=["eval_image"]), out / "eval_candidates.parquet")
    summary = {
        "corpus": str(corpus), "image_tower": image_tower, "image_fit": image_fit, "mode": mode, "top_k": top_k, "min_cosine": min_cosine,
        "verify": verifier.rules.to_dict(), "eval_images": len(index.key), "shards": len(shards),
        "candidates": int(candidates["key"].nunique()), "flagged": len(flagged_keys),
        "confirmed": len(confirmed_keys),
        "undecided": len(flagged_keys - confirmed_keys),  # flagged with no confirmed candidate
        "flags": str(out / "eval_flags.parquet"), "candidates_file": str(out / "eval_candidates.parquet"),
    }
    (out / "flags.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
