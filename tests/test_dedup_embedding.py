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


def test_eval_vectors_are_stored_per_split_and_tower_and_reused(tmp_path):
    """The embedding check runs the tower over the eval sets once: its vectors are kept in the index
    folder per (tower fingerprint, split digest); a changed split, or another tower, embeds again."""
    from dedup.embedding import eval_embedding_index, stored_vectors_path
    from dedup.evalsets import EvalSet, ImageFolder, Split
    from dedup.index import build_index, read_manifest

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for i in range(5):
            (tmp_path / split / "noise").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / split / "noise" / f"{i}.png")
    (tmp_path / "test" / "noise" / "broken.png").write_bytes(b"not an image")  # unreadable: never embedded
    evalset = EvalSet("probe", (Split("train", ImageFolder(str(tmp_path / "train")), role="train"),
                                Split("test", ImageFolder(str(tmp_path / "test")))))
    index_dir = tmp_path / "index"
    build_index([evalset], index_dir, features=False)
    embedded = []

    def embed(images):  # a plain embed(images) -> vectors; the unit here is the store around it
        embedded.extend(images)
        return np.stack([np.asarray(im.convert("RGB"), np.float32).mean((0, 1)) + 1.0 for im in images])

    first = eval_embedding_index(embed, index_dir, fingerprint="tower-a" * 4)
    assert len(embedded) == 10 and len(first.key) == 10
    again = eval_embedding_index(embed, index_dir, fingerprint="tower-a" * 4)
    assert len(embedded) == 10  # nothing embedded the second time
    assert np.array_equal(again.vectors, first.vectors) and again.key == first.key and again.ref == first.ref
    assert len(eval_embedding_index(embed, index_dir, mode="test", fingerprint="tower-a" * 4).key) == 5
    eval_embedding_index(embed, index_dir, fingerprint="tower-b" * 4)
    assert len(embedded) == 20  # another tower: its own vectors
    eval_embedding_index(embed, index_dir)
    assert len(embedded) == 30  # no fingerprint: nothing stored, nothing read

    # one split changes: only it is embedded again, and its old vectors leave the folder
    old = {split: info.digest for split, info in read_manifest(index_dir).sets["probe"].splits.items()}
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "test" / "noise" / "5.png")
    build_index([evalset], index_dir, features=False)
    assert not stored_vectors_path(index_dir, "tower-a" * 4, old["test"]).exists()
    assert stored_vectors_path(index_dir, "tower-a" * 4, old["train"]).exists()
    changed = eval_embedding_index(embed, index_dir, fingerprint="tower-a" * 4)
    assert len(embedded) == 36 and len(changed.key) == 11
