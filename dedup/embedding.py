"""The embedding check: nearest eval images by cosine propose, :mod:`dedup.verify` confirms.

pHash misses crops, padding and rotations; the locked image tower's embeddings (computed once
per image by training's embedding pass) keep the right eval image among the nearest few. A
cosine threshold alone cannot decide, though: on ``bench/bench_dedup_quality.py`` the threshold
that keeps the false-positive rate at 1e-4 catches under half of the crops, because a yellow
smiley is near every other yellow smiley. So the ``top_k`` nearest eval images above a low
``min_cosine`` are *candidates*, and each is verified geometrically. The check is written against a plain
``embed(images: list[PIL.Image]) -> np.ndarray`` (N x D, float) so that any tower plugs in;
vectors are L2-normalised here, so cosine is a dot product and a search over the eval set is
one matrix product per chunk of corpus vectors.

Flags, not rewrites: ``training.eval_flags.flag_cached_corpus`` returns a table (corpus key -> eval set, split,
key, cosine, verification) that training reads (``litflow train --exclude``) to skip those
pairs and the report shows; the shards are left as they are.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from dedup.modes import removes
from infra.contract import NO_DISTANCE

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


def embed_all(embed: Embed, images: Iterable, batch: int = 64) -> np.ndarray:
    """Run ``embed`` over images in batches; returns L2-normalised float32 (N x D).

    ``images`` is consumed ``batch`` at a time, so a generator that opens each image when asked
    keeps one batch of images in memory, not all of them."""
    images = iter(images)
    parts = []
    while chunk := list(itertools.islice(images, batch)):
        parts.append(np.asarray(embed(chunk)))
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
    ref: list[str] | None = None  # where each eval image's bytes are (for verification)

    def __post_init__(self):
        self.vectors = l2_normalise(self.vectors)
        if not (len(self.vectors) == len(self.eval_set) == len(self.split) == len(self.key)):
            raise ValueError("embedding index: vectors and labels differ in length")
        if self.ref is not None and len(self.ref) != len(self.key):
            raise ValueError("embedding index: refs and keys differ in length")

    def top_k(self, queries: np.ndarray, k: int, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """(N x k) eval image numbers and cosines of each query's k nearest, nearest first."""
        queries = l2_normalise(queries)
        if queries.shape[1] != self.vectors.shape[1]:
            raise ValueError(f"embedding sizes differ: corpus {queries.shape[1]} vs eval {self.vectors.shape[1]}")
        k = min(k, len(self.vectors))
        index, cosine = [], []
        for start in range(0, len(queries), chunk):
            sims = queries[start:start + chunk] @ self.vectors.T
            part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            part_sims = np.take_along_axis(sims, part, 1)
            # nearest first; ties by eval image number, so the order is deterministic
            order = np.lexsort((part, -part_sims), axis=1)
            index.append(np.take_along_axis(part, order, 1))
            cosine.append(np.take_along_axis(part_sims, order, 1))
        return np.concatenate(index), np.concatenate(cosine)

    def nearest(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index and cosine of each query's nearest eval image."""
        image, cosine = self.top_k(queries, 1)
        return image[:, 0], cosine[:, 0]


def flag_duplicates(corpus_keys: Sequence[str], corpus_vectors: np.ndarray, index: EmbeddingIndex,
                    threshold: float) -> pd.DataFrame:
    """Corpus pairs whose nearest eval image has cosine >= threshold (the embedding signal alone).

    Kept for measuring the signal on its own (the quality benchmark's ``embedding`` column);
    the pipeline uses :func:`embedding_candidates` and verification instead.
    """
    i, cos = index.nearest(corpus_vectors)
    hit = np.flatnonzero(cos >= threshold)
    return pd.DataFrame({
        "key": [corpus_keys[h] for h in hit],
        "eval_set": [index.eval_set[i[h]] for h in hit],
        "eval_split": [index.split[i[h]] for h in hit],
        "eval_key": [index.key[i[h]] for h in hit],
        "cosine": cos[hit].astype(np.float32),
    })


def embedding_candidates(corpus_keys: Sequence[str], corpus_vectors: np.ndarray, index: EmbeddingIndex,
                         top_k: int = 3, min_cosine: float = 0.5) -> pd.DataFrame:
    """(corpus key, eval image) candidates: each query's ``top_k`` nearest with cosine >= ``min_cosine``."""
    columns = ["key", "eval_image", "eval_set", "eval_split", "eval_key", "signal", "distance", "cosine", "rank"]
    if len(corpus_keys) == 0 or len(index.vectors) == 0:
        return pd.DataFrame({c: [] for c in columns})
    image, cosine = index.top_k(corpus_vectors, top_k)
    q, rank = np.nonzero(cosine >= min_cosine)
    hit = image[q, rank]
    return pd.DataFrame({
        "key": [corpus_keys[i] for i in q], "eval_image": hit.astype(np.int64),
        "eval_set": [index.eval_set[h] for h in hit], "eval_split": [index.split[h] for h in hit],
        "eval_key": [index.key[h] for h in hit], "signal": "embedding",
        "distance": np.full(len(q), NO_DISTANCE, np.int32), "cosine": cosine[q, rank].astype(np.float32),
        "rank": rank.astype(np.int32),
    })


def verify_candidates(candidates: pd.DataFrame, corpus_images: dict[str, bytes], index: EmbeddingIndex,
                      verifier) -> pd.DataFrame:
    """Candidates with their verification (``confirmed``, ``undecided``, ``inliers``...) and ``flagged``.

    ``corpus_images`` maps each candidate's key to its image bytes; ``verifier`` is a
    :class:`dedup.verify.Verifier`. A candidate whose corpus or eval image cannot be read now is
    kept as flagged and undecided (verification cannot veto what it cannot see).
    """
    from dedup.verify import Verifier

    if index.ref is None:
        raise ValueError("embedding index has no eval refs: build it with eval_embedding_index()")
    rows, features = [], {}
    for row in candidates.itertuples(index=False):
        if row.key not in features:
            features[row.key] = Verifier.corpus_features(corpus_images.get(row.key, b""))
        verdict = verifier.try_check(features[row.key], index.ref[row.eval_image])
        if verdict is None:
            unreadable = "corpus image unreadable" if features[row.key] is None else "eval image unreadable"
            rows.append(dict(confirmed=False, undecided=True, inliers=0, ncc=np.nan, block_agreement=np.nan,
                             colour_diff=np.nan, mirrored=False, flagged=True, verification=unreadable))
            continue
        rows.append(dict(confirmed=verdict.confirmed, undecided=verdict.undecided, inliers=verdict.inliers,
                         ncc=verdict.ncc, block_agreement=verdict.block_agreement, colour_diff=verdict.colour_diff,
                         mirrored=verdict.mirrored, flagged=Verifier.decide(verdict), verification=verdict.summary()))
    checked = pd.DataFrame(rows, columns=["confirmed", "undecided", "inliers", "ncc", "block_agreement", "colour_diff",
                                          "mirrored", "flagged", "verification"])
    return pd.concat([candidates.reset_index(drop=True), checked], axis=1)


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


EMBEDDINGS = "embeddings"  # folder of an eval index holding its images' vectors, per tower


def stored_vectors_path(index_dir, fingerprint: str, digest: str):
    """Where an eval index keeps one split's vectors under one tower:
    ``embeddings/<tower fingerprint[:16]>/<split digest[:16]>.npy`` (rows: the split's readable
    images in table order; float32, L2-normalised). Both halves of the name change with what the
    vectors depend on, so a file found there is never stale, only possibly orphaned."""
    from pathlib import Path

    return Path(index_dir) / EMBEDDINGS / fingerprint[:16] / f"{digest[:16]}.npy"


def eval_embedding_index(embed: Embed, index_dir, mode: str = "train+test", batch: int = 64,
                         fingerprint: str | None = None) -> EmbeddingIndex:
    """Embed every readable eval image of an eval index (``litflow dedup index`` output).

    Images are read and embedded ``batch`` at a time: memory holds one batch of images and the
    vectors (N x D float32: 5 KB an image at D = 1280, 6.7 GB for ImageNet's 1.3 M), never every
    eval image's bytes.

    ``fingerprint`` (the tower's): each split's vectors are kept in the index folder
    (:func:`stored_vectors_path`) and read back next time instead of running the tower again.
    Why: the eval sets rarely change, while ``litflow dedup flag`` and every nightly retrain
    check the corpus against them; at 82k eval images the locked tower's pass is about 30 min on
    two CPU cores, every run. A folder that cannot be written (read-only) only loses the cache.
    """
    import io
    from pathlib import Path

    import pyarrow.parquet as pq
    from PIL import Image

    from dedup.evalsets import read_ref
    from dedup.index import read_manifest
    from infra.files import replacing

    manifest = read_manifest(index_dir)
    sets, splits, keys, refs, parts = [], [], [], [], []
    for set_name, info in sorted(manifest.sets.items()):
        for split, split_info in sorted(info.splits.items()):
            if not removes(mode, split_info.role):
                continue
            table = pq.read_table(Path(index_dir) / split_info.file, columns=["key", "ref", "error"]).to_pylist()
            readable = [row for row in table if row["error"] is None]
            if not readable:
                continue
            split_refs = [row["ref"] for row in readable]
            stored = stored_vectors_path(index_dir, fingerprint, split_info.digest) if fingerprint else None
            vectors = np.load(stored) if stored is not None and stored.exists() else None
            if vectors is None or vectors.ndim != 2 or len(vectors) != len(split_refs):
                vectors = embed_all(embed, (Image.open(io.BytesIO(read_ref(ref))) for ref in split_refs), batch)
                if stored is not None:
                    try:
                        stored.parent.mkdir(parents=True, exist_ok=True)
                        with replacing(stored) as tmp:
                            with open(tmp, "wb") as handle:
                                np.save(handle, vectors.astype(np.float32))
                    except OSError:
                        pass  # a read-only index: no cache, same vectors
            sets += [set_name] * len(readable)
            splits += [split] * len(readable)
            keys += [row["key"] for row in readable]
            refs += split_refs
            parts.append(np.asarray(vectors, np.float32))
    if not refs:
        raise ValueError(f"{index_dir}: no readable eval images under mode {mode!r}")
    return EmbeddingIndex(np.concatenate(parts), sets, splits, keys, refs)
