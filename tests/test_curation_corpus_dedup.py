"""Optional removal of duplicates inside the corpus (``corpus_dedup``), through the real Beam
pipeline (FnApiRunner, 2 worker processes), plus the pure function that picks what to drop."""

from __future__ import annotations

import hashlib
import json
from itertools import combinations

import pandas as pd
import pytest
from PIL import Image, ImageEnhance

from curation.config import load_config
from curation.curate import curate
from dedup.intra import duplicates_to_drop
from dedup.phash import DEFAULT_SETTINGS, hamming, hash_image_bytes
from tests.test_curation_pipeline import EMOJI, jpeg, kept_samples, write_raw_tar

RULES = ["text.rare_tokens_enabled=false"]


def _phash(data: bytes) -> int:
    return hash_image_bytes(data, DEFAULT_SETTINGS)[0]


@pytest.fixture(scope="module")
def corpus(demo_data, tmp_path_factory):
    """Real emoji pictures: ``a_orig`` and ``b_copy`` are the same bytes, ``d_bright`` is a
    brightened re-encode of ``c_orig`` (a small pHash distance, measured here), ``e*`` are
    distinct. The copies are read *before* their originals, so "first key" is not "first read"."""
    root = tmp_path_factory.mktemp("corpus_dedup")
    # six pictures whose pHashes are pairwise > 16 bits apart (many smileys are within 8)
    pictures, hashes = [], []
    for path in sorted((demo_data.cache / EMOJI).glob("1f6*.png")):
        picture = Image.open(path).convert("RGB").resize((300, 300))
        h = _phash(jpeg(picture))
        if all(hamming(h, other) > 16 for other in hashes):
            pictures.append(picture)
            hashes.append(h)
        if len(pictures) == 6:
            break
    # the first (picture, brightening) that moves the pHash at all but stays a near duplicate
    found = None
    for i, picture in enumerate(pictures):
        for factor in (1.1, 1.2, 1.3, 1.4, 1.5):
            bright = jpeg(ImageEnhance.Brightness(picture).enhance(factor), quality=80)
            distance = hamming(hashes[i], _phash(bright))
            if 1 <= distance <= 8:
                found = i, bright, distance
                break
        if found:
            break
    assert found, "no brightening of the pictures gave a pHash distance in 1..8"
    near, bright, distance = found
    others = [p for i, p in enumerate(pictures) if i != near]
    data = {"c_orig": jpeg(pictures[near]), "d_bright": bright, "a_orig": jpeg(others[0])}
    data["b_copy"] = data["a_orig"]
    for i, picture in enumerate(others[1:]):
        data[f"e{i}"] = jpeg(picture)
    # the distinct pictures are far from each other and from both groups at every radius used
    groups = {"a_orig": "a", "b_copy": "a", "c_orig": "c", "d_bright": "c"}
    hashes = {key: _phash(value) for key, value in data.items()}
    for x, y in combinations(sorted(data), 2):
        if groups.get(x, x) != groups.get(y, y):
            assert hamming(hashes[x], hashes[y]) > distance, (x, y, hamming(hashes[x], hashes[y]))
    order = ["b_copy", "d_bright", "e0", "a_orig", "e1", "c_orig", "e2", "e3"]  # copies read first
    members = []
    for key in order:
        members += [(f"{key}.jpg", data[key]), (f"{key}.txt", f"a real picture called {key} here".encode())]
    (root / "raw").mkdir()
    write_raw_tar(root / "raw" / "00000.tar", members[:8])
    write_raw_tar(root / "raw" / "00001.tar", members[8:])
    return root, data, distance


def run(root, out_name, overrides=()):
    manifest = curate(root / "raw", root / out_name, load_config("align", [*RULES, *overrides]), workers=2)
    rejected = pd.read_parquet(root / out_name / "rejected").set_index("key")
    return manifest, rejected, set(kept_samples(root / out_name))


def check_accounting(manifest, removed):
    assert manifest["inputs"] == 8
    assert manifest["inputs"] == manifest["kept"] + sum(manifest["rejected"].values())
    assert manifest["kept"] == 8 - removed
    assert manifest["rejected"].get("corpus_duplicate", 0) == removed
    stage = manifest["stages"]["corpus_dedup"]
    assert stage["in"] == 8 and stage["out"] == 8 - removed
    assert stage["rejected"] == ({"corpus_duplicate": removed} if removed else {})


def test_default_keeps_every_duplicate(corpus):
    root, data, _ = corpus
    manifest, rejected, kept = run(root, "none")
    assert kept == set(data) and rejected.empty
    assert manifest["config"]["corpus_dedup"] == {"remove": "none", "radius": 4, "rounds": 8}
    assert manifest["corpus_duplicates"] == {"exact": 0, "near": 0}
    check_accounting(manifest, 0)


def test_exact_removes_only_the_byte_identical_copy(corpus):
    root, data, _ = corpus
    manifest, rejected, kept = run(root, "exact", ['corpus_dedup.remove="exact"'])
    assert kept == set(data) - {"b_copy"}  # the first key (a_orig) stays though read second
    assert rejected.loc["b_copy", "reason"] == "corpus_duplicate"
    assert rejected.loc["b_copy", "detail"] == "exact duplicate of a_orig"
    assert manifest["corpus_duplicates"] == {"exact": 1, "near": 0}
    assert manifest["config"]["corpus_dedup"]["remove"] == "exact"
    check_accounting(manifest, 1)


def test_near_removes_both_within_the_radius(corpus):
    root, data, distance = corpus
    manifest, rejected, kept = run(root, "near", ['corpus_dedup.remove="near"', f"corpus_dedup.radius={distance}"])
    assert kept == set(data) - {"b_copy", "d_bright"}
    assert rejected.loc["b_copy", "detail"] == "exact duplicate of a_orig"
    assert rejected.loc["d_bright", "reason"] == "corpus_duplicate"
    assert rejected.loc["d_bright", "detail"] == f"near duplicate of c_orig (pHash distance {distance})"
    # the record carries the pHash the pipeline computed: the distance is between those values
    assert hamming(int(rejected.loc["d_bright", "phash"]), _phash(data["c_orig"])) == distance
    assert manifest["corpus_duplicates"] == {"exact": 1, "near": 1}
    assert manifest["config"]["corpus_dedup"] == {"remove": "near", "radius": distance, "rounds": 8}
    assert json.loads((root / "near" / "corpus.json").read_text())["config"]["corpus_dedup"]["radius"] == distance
    check_accounting(manifest, 2)


def test_near_keeps_the_copy_just_outside_the_radius(corpus):
    root, data, distance = corpus
    manifest, rejected, kept = run(root, "near-below", ['corpus_dedup.remove="near"', f"corpus_dedup.radius={distance - 1}"])
    assert kept == set(data) - {"b_copy"}
    assert manifest["corpus_duplicates"] == {"exact": 1, "near": 0}
    check_accounting(manifest, 1)


def test_same_input_same_output(corpus):
    root, _, distance = corpus
    rules = ['corpus_dedup.remove="near"', f"corpus_dedup.radius={distance}"]
    first, _, _ = run(root, "near-1", rules)
    second, _, _ = run(root, "near-2", rules)
    assert first == second
    for name in ("rejected/00000.parquet", "corpus.json"):
        assert (root / "near-1" / name).read_bytes() == (root / "near-2" / name).read_bytes()

    def digests(out):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (root / out / "shards").iterdir()}

    assert digests("near-1") == digests("near-2")


@pytest.mark.parametrize("assignment, message", [
    ('corpus_dedup.remove="fuzzy"', "corpus_dedup.remove: Input should be 'none', 'exact' or 'near'"),
    ("corpus_dedup.remove=true", "corpus_dedup.remove: Input should be 'none', 'exact' or 'near'"),
    ("corpus_dedup.radius=-1", "corpus_dedup.radius: Input should be greater than or equal to 0"),
    ("corpus_dedup.radius=65", "corpus_dedup.radius: Input should be less than or equal to 64"),
    ('corpus_dedup.radius="4"', "corpus_dedup.radius: Input should be a valid integer"),
    ("corpus_dedup.radius=2.5", "corpus_dedup.radius: Input should be a valid integer"),
    ("corpus_dedup.strength=3", "corpus_dedup has no field 'strength'"),
])
def test_bad_values_are_refused(assignment, message):
    with pytest.raises(ValueError, match=message):
        load_config("align", [assignment])


def test_presets_keep_duplicates_by_default():
    for preset in ("align", "lit-relaxed"):
        assert load_config(preset).corpus_dedup.remove == "none"
    assert load_config("lit-relaxed", ["corpus_dedup.remove=near"]).corpus_dedup.remove == "near"


def test_duplicates_to_drop_rules():
    """The pure rule: key order decides, chains are one group, input order does not matter."""
    a, b, c = 0b0, 0b111, 0b111111  # a~b at 3 bits, b~c at 3 bits, a~c at 6 bits
    items = [("k3", "s3", c), ("k1", "s1", a), ("k2", "s2", b), ("k4", "s1", a), ("k5", None, None)]
    assert duplicates_to_drop(items, "none") == {}
    assert duplicates_to_drop(items, "exact") == {"k4": ("k1", 0, "exact")}
    # a chain k1~k2~k3 is one group; k3 is 6 bits from the kept k1, beyond the radius of 3
    near = {"k2": ("k1", 3, "near"), "k3": ("k1", 6, "near"), "k4": ("k1", 0, "exact")}
    assert duplicates_to_drop(items, "near", 3) == near
    assert duplicates_to_drop(list(reversed(items)), "near", 3) == near
    assert duplicates_to_drop(items, "near", 2) == {"k4": ("k1", 0, "exact")}
    assert duplicates_to_drop([], "near") == {}
    assert duplicates_to_drop([("x", "s1", a), ("y", "s2", c)], "near", 5) == {}  # no group at all
    with pytest.raises(ValueError, match="remove mode"):
        duplicates_to_drop(items, "fuzzy")
