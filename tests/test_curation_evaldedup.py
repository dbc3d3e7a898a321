"""Eval de-duplication inside the curation pipeline: the eval index as each worker's lookup."""

from __future__ import annotations

import functools

import pandas as pd
import pytest
from PIL import Image, ImageOps

from curation.config import EvalDedupRules, load_config
from curation.curate import curate
from dedup.evalsets import EvalSet, ImageFolder, Split
from dedup.index import build_index
from dedup.phash import DEFAULT_SETTINGS, HashSettings, HashSettingsMismatch, hamming, hash_image_bytes
from dedup.verify import Verifier, VerifyRules
from tests.test_curation_pipeline import EMOJI, jpeg, write_raw_tar


@pytest.fixture(scope="module")
def probe(demo_data, tmp_path_factory):
    """Six real corpus images; the eval set holds copies or edits of four of them.

    The six are the pinched-fingers emoji in its five skin tones and the default yellow
    (1f90c-1f3fb ... 1f90c-1f3ff, 1f90c): pHash puts them all within the radius of each other,
    so verification decides which candidates are the same picture.
    """
    root = tmp_path_factory.mktemp("evaldedup")
    sources = sorted((demo_data.cache / EMOJI).glob("1f9*.png"))[:6]
    pictures = [Image.open(p).convert("RGB").resize((300, 300)) for p in sources]
    corpus_bytes = [jpeg(p) for p in pictures]
    members = []
    for i, data in enumerate(corpus_bytes):
        members += [(f"s{i}.jpg", data), (f"s{i}.txt", f"a real picture number {i} here".encode())]
    (root / "raw").mkdir()
    write_raw_tar(root / "raw" / "00000.tar", members)
    edits = {
        ("test", "exact"): (0, corpus_bytes[0]),
        ("test", "mirror"): (1, jpeg(ImageOps.mirror(pictures[1]))),
        ("test", "q30"): (2, jpeg(pictures[2], quality=30)),
        ("train", "exact"): (3, corpus_bytes[3]),
    }
    for (split, name), (_, data) in edits.items():
        folder = root / "eval" / split / "things"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.jpg").write_bytes(data)
    evalset = EvalSet("probe", (Split("test", ImageFolder(str(root / "eval" / "test"))),
                                Split("train", ImageFolder(str(root / "eval" / "train")), role="train")))
    build_index([evalset], root / "index")
    return root, corpus_bytes, edits


@functools.lru_cache(maxsize=None)  # one curation run per mode, shared by the tests below
def run(root, mode, radius=8):
    config = load_config("align", [f"eval_dedup.index=\"{root / 'index'}\"", f"eval_dedup.mode=\"{mode}\"",
                                   f"eval_dedup.radius={radius}", "text.rare_tokens_enabled=false"])
    manifest = curate(root / "raw", root / f"out-{mode}", config, workers=2)
    rejected = pd.read_parquet(root / f"out-{mode}" / "rejected")
    return manifest, rejected.set_index("key")


def expected_matches(corpus_bytes, edits, splits, radius=8):
    """The rule itself: a corpus image matches when an active eval image's pHash, or its
    mirror's, is within ``radius`` bits; the nearest eval images are reported."""
    found = {}
    for i, data in enumerate(corpus_bytes):
        ours = hash_image_bytes(data, DEFAULT_SETTINGS)[0]
        distances = {}
        for (split, name), (_, eval_data) in edits.items():
            if split in splits:
                theirs, mirror = hash_image_bytes(eval_data, DEFAULT_SETTINGS)
                distances[(split, f"things/{name}.jpg")] = min(hamming(ours, theirs), hamming(ours, mirror))
        if distances and min(distances.values()) <= radius:
            best = min(distances.values())
            found[f"s{i}"] = {k for k, d in distances.items() if d == best}
    return found


def expected_rejections(root, corpus_bytes, edits, splits, radius=8):
    """The rule with verification: the pHash candidates (``expected_matches``' distances, nearest
    first, ties by split and key as ``Match`` sorts, at most ``max_candidates``) are verified in
    turn, each the way(s) round whose hash is within the radius (as it is, mirrored), and the
    first one confirmed is the match. Returns {corpus key: (split, eval key)}."""
    verifier = Verifier()
    found = {}
    for i, data in enumerate(corpus_bytes):
        ours = hash_image_bytes(data, DEFAULT_SETTINGS)[0]
        candidates = []
        for (split, name), (_, eval_data) in edits.items():
            theirs, mirror = hash_image_bytes(eval_data, DEFAULT_SETTINGS)
            ways = (hamming(ours, theirs) <= radius, hamming(ours, mirror) <= radius)
            distance = min(hamming(ours, theirs), hamming(ours, mirror))
            if split in splits and distance <= radius:
                candidates.append((distance, split, f"things/{name}.jpg", ways))
        for _, split, key, ways in sorted(candidates)[:EvalDedupRules().max_candidates]:
            if Verifier.decide(verifier.check(data, str(root / "eval" / split / key), ways=ways)):
                found[f"s{i}"] = (split, key)
                break
    return found


def own_copies(edits, splits):
    """Ground truth: corpus key -> the (split, eval key) made from it, in the active splits."""
    truth = {}
    for (split, name), (source, _) in edits.items():
        if split in splits:
            truth.setdefault(f"s{source}", set()).add((split, f"things/{name}.jpg"))
    return truth


@pytest.mark.parametrize("mode, splits", [("train+test", {"train", "test"}), ("test", {"test"}), ("none", set())])
def test_modes_remove_the_expected_pairs(probe, mode, splits):
    root, corpus_bytes, edits = probe
    proposed = expected_matches(corpus_bytes, edits, splits)
    expected = expected_rejections(root, corpus_bytes, edits, splits)
    truth = own_copies(edits, splits)
    assert set(truth) <= set(proposed)  # pHash proposes every copy's own eval image (exact, mirror, q30)
    assert set(truth) <= set(expected)  # and verification confirms a candidate for each copy
    if mode == "train+test":
        # pHash alone would remove s4 and s5 too (other skin tones); verification keeps at least
        # one (an adjacent tone can differ on less than max_colour_diff: see the xfail below)
        assert {"s4", "s5"} <= set(proposed) and {"s4", "s5"} - set(expected)
    manifest, rejected = run(root, mode)
    dups = rejected[rejected["reason"] == "eval_duplicate"]
    assert sorted(dups.index) == sorted(expected)
    for key, (split, eval_key) in expected.items():
        assert dups.loc[key, "eval_set"] == "probe" and dups.loc[key, "eval_distance"] <= 8
        assert (dups.loc[key, "eval_split"], dups.loc[key, "eval_key"]) == (split, eval_key)
        assert (split, eval_key) in proposed[key]  # the confirmed candidate is one of the nearest
        assert "; confirmed: " in dups.loc[key, "detail"]  # the verification summary is in the detail
    for i, own in ((0, ("test", "things/exact.jpg")), (3, ("train", "things/exact.jpg"))):
        if own[0] in splits:  # an exact copy is among its nearest eval images, at distance 0
            assert own in proposed[f"s{i}"] and dups.loc[f"s{i}", "eval_distance"] == 0
    assert manifest["rejected"].get("eval_duplicate", 0) == len(expected)
    assert sum(n for split_counts in manifest["eval_duplicates"].values() for n in split_counts.values()) == len(expected)
    assert manifest["inputs"] == manifest["kept"] + sum(manifest["rejected"].values())
    assert manifest["eval_dedup_verify"] == VerifyRules().to_dict()


@pytest.mark.xfail(strict=True, reason="method claim does not hold: adjacent skin tones of one emoji are "
                   "confirmed as the same picture (their colour differs on less than max_colour_diff of the image), so s1..s3 match a neighbour's "
                   "eval image and s3 is removed in test mode though its own copy is in train")
@pytest.mark.parametrize("mode, splits", [("train+test", {"train", "test"}), ("test", {"test"})])
def test_each_copy_matches_its_own_eval_image(probe, mode, splits):
    root, corpus_bytes, edits = probe
    truth = own_copies(edits, splits)
    _, rejected = run(root, mode)
    dups = rejected[rejected["reason"] == "eval_duplicate"]
    assert {k: (dups.loc[k, "eval_split"], dups.loc[k, "eval_key"]) for k in dups.index} == \
        {k: own for k, owns in truth.items() for own in owns}


def test_index_with_other_hash_settings_is_refused(probe, tmp_path):
    root, _, _ = probe
    evalset = EvalSet("probe", (Split("test", ImageFolder(str(root / "eval" / "test"))),))
    build_index([evalset], tmp_path / "fulldecode", HashSettings(jpeg_draft=None))
    config = load_config("align", [f"eval_dedup.index=\"{tmp_path / 'fulldecode'}\""])
    with pytest.raises(HashSettingsMismatch, match="hash settings differ"):
        curate(root / "raw", tmp_path / "out", config, workers=2)
    assert not (tmp_path / "out").exists()  # refused before the run
