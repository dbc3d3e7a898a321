"""Embedding check with the real locked tower: a crop/pad/rotation pHash misses is flagged."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from dedup.embedding import EmbeddingIndex, calibrate_threshold, embed_all, flag_duplicates, l2_normalise
from dedup.phash import hamming, phash64


def test_calibrated_threshold_meets_the_rate_on_its_negatives():
    negatives = np.linspace(0.0, 0.99, 10_001)
    threshold = calibrate_threshold(negatives, 1e-3)
    assert np.mean(negatives >= threshold) <= 1e-3
    # and it is the smallest such: one step lower lets one more negative through
    assert np.mean(negatives >= np.nextafter(np.sort(negatives)[-11], -np.inf)) > 1e-3
    with pytest.raises(ValueError):
        calibrate_threshold(np.array([]), 1e-3)


def test_index_rejects_bad_vectors():
    with pytest.raises(ValueError, match="all zeros"):
        l2_normalise(np.zeros((2, 4)))
    index = EmbeddingIndex(np.eye(3), ["s"] * 3, ["test"] * 3, ["a", "b", "c"])
    with pytest.raises(ValueError, match="sizes differ"):
        index.nearest(np.ones((1, 4)))


@pytest.fixture(scope="module")
def embed():
    from training.eval_flags import tower_embedder

    return tower_embedder("efficientnet-lite0")


def test_real_tower_flags_edits_phash_misses(embed):
    import skimage.data as data

    photos = [Image.fromarray(f()).convert("RGB") for f in (data.astronaut, data.coffee, data.chelsea, data.rocket,
                                                              data.camera, data.brick)]
    crops = [im.crop((im.width // 10, im.height // 10, im.width * 9 // 10, im.height * 9 // 10)) for im in photos]
    padded = [ImageOps.expand(im, border=im.width // 10, fill="black") for im in photos]
    eval_vec = embed_all(embed, photos)
    index = EmbeddingIndex(eval_vec, ["photos"] * len(photos), ["test"] * len(photos), [str(i) for i in range(len(photos))])
    # the threshold sits above every distinct-photo cosine (the false-positive side)
    sims = eval_vec @ eval_vec.T
    threshold = calibrate_threshold(sims[np.triu_indices(len(photos), 1)], 0.0)
    for edited in (crops, padded):
        flags = flag_duplicates([f"c{i}" for i in range(len(photos))], embed_all(embed, edited), index, threshold)
        assert flags["eval_key"].tolist() == flags["key"].str[1:].tolist()  # each flagged as its own original
        assert len(flags) >= len(photos) - 1
    # and pHash really misses at least one of these at radius 8 (else the check adds nothing here)
    misses = [hamming(phash64(a), phash64(b)) > 8 for a, b in zip(photos + photos, crops + padded)]
    assert any(misses)
