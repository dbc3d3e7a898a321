"""``litflow dedup flag``: the embedding check over a curated corpus, written for training.

Reads the locked tower's embeddings of every corpus pair from training's cache (computed once by
``litflow embed``), embeds the eval images with the same tower, proposes each pair's nearest
eval images and verifies them (:mod:`dedup.embedding`, :mod:`dedup.verify`). Writes:

* ``eval_flags.parquet`` — the flagged pairs only (confirmed, or undecided): training's
  exclusion list (``litflow train --exclude``), so nothing is rewritten;
* ``eval_candidates.parquet`` — every candidate with its verification, for the audit report
  (``litflow dedup report --candidates``);
* ``flags.json`` — settings and counts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from dedup.corpus import shard_paths


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(".parquet.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def flag_corpus(corpus: str | Path, cache_root: str | Path, index_dir: str | Path, out: str | Path,
                image_tower: str = "efficientnet-lite0", mode: str = "train+test", top_k: int = 3,
                min_cosine: float = 0.5) -> dict:
    from dedup.embedding import eval_embedding_index, flag_cached_corpus, tower_embedder
    from dedup.verify import Verifier
    from training.embed_cache import open_cache

    if mode not in ("test", "train+test"):
        raise ValueError(f"mode must be test or train+test, not {mode!r}")
    shards = shard_paths(Path(corpus))  # raises when there are none
    embed = tower_embedder(image_tower)
    cache = open_cache(cache_root, embed.tower)
    index = eval_embedding_index(embed, index_dir, mode)
    verifier = Verifier()
    candidates = flag_cached_corpus(cache, shards, index, verifier, top_k, min_cosine)
    flagged = candidates[candidates["flagged"]].drop(columns=["eval_image"])
    flagged_keys = set(flagged["key"])
    confirmed_keys = set(candidates.loc[candidates["confirmed"], "key"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_parquet(flagged.reset_index(drop=True), out / "eval_flags.parquet")
    _write_parquet(candidates.drop(columns=["eval_image"]), out / "eval_candidates.parquet")
    summary = {
        "corpus": str(corpus), "image_tower": image_tower, "mode": mode, "top_k": top_k, "min_cosine": min_cosine,
        "verify": verifier.rules.to_dict(), "eval_images": len(index.key), "shards": len(shards),
        "candidates": int(candidates["key"].nunique()), "flagged": len(flagged_keys),
        "confirmed": len(confirmed_keys),
        "undecided": len(flagged_keys - confirmed_keys),  # flagged with no confirmed candidate
        "flags": str(out / "eval_flags.parquet"), "candidates_file": str(out / "eval_candidates.parquet"),
    }
    (out / "flags.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
