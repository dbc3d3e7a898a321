"""Eval-set registry and eval index: layouts, bad input, content versioning, modes, matching."""

from __future__ import annotations

import csv
import io
import json
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dedup import evalsets
from dedup.evalsets import (CaptionsFile, EmptyEvalSet, EvalSet, ImageFolder, Split, WebDatasetShards)
from dedup.index import EvalIndex, Match, build_index, eval_duplicate_fields
from dedup.phash import DEFAULT_SETTINGS, HashSettings, HashSettingsMismatch, hash_image_bytes


@pytest.fixture(scope="module")
def emoji_paths(demo_data):
    return sorted((demo_data.cache / "emoji/img/google/64").glob("1f3*.png"))[:40]


def _folder_set(root: Path, paths: list[Path], name="folder") -> EvalSet:
    for i, path in enumerate(paths):
        dest = root / f"class{i % 3}" / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)
    return EvalSet(name, (Split("test", ImageFolder(str(root)), "test"),))


def test_three_layouts_read_the_same_images(tmp_path, emoji_paths):
    paths = emoji_paths[:6]
    folder = _folder_set(tmp_path / "folder", paths)
    images = tmp_path / "cap" / "img"
    images.mkdir(parents=True)
    for p in paths:
        shutil.copy(p, images / p.name)
    with (tmp_path / "cap" / "captions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows([[f"img/{p.name}", f"emoji {p.stem}"] for p in paths])
    (tmp_path / "cap" / "captions.jsonl").write_text(
        "".join(json.dumps({"image": f"img/{p.name}", "caption": p.stem}) + "\n" for p in paths))
    shard = tmp_path / "wds" / "000000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for p in paths:
            for name, data in ((f"{p.stem}.png", p.read_bytes()), (f"{p.stem}.txt", p.stem.encode()),
                               (f"{p.stem}.cls", b"3")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    sources = [folder.splits[0].source, CaptionsFile(str(tmp_path / "cap" / "captions.csv")),
               CaptionsFile(str(tmp_path / "cap" / "captions.jsonl")), WebDatasetShards((str(shard),))]
    want = sorted(hash_image_bytes(p.read_bytes()) for p in paths)
    for source in sources:
        items = list(source.items())
        assert len(items) == len(paths)
        assert sorted(hash_image_bytes(i.read()) for i in items) == want, source.describe()
    wds = list(sources[-1].items())
    assert {i.label for i in wds} == {"3"} and wds[0].caption == paths[0].stem
    assert {i.label for i in folder.splits[0].source.items()} == {"class0", "class1", "class2"}


def test_empty_set_and_missing_root_are_clear_errors(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    empty = EvalSet("empty", (Split("test", ImageFolder(str(tmp_path / "empty"))),))
    with pytest.raises(EmptyEvalSet, match="'empty' split 'test' has no images"):
        build_index([empty], tmp_path / "idx")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_index([EvalSet("gone", (Split("test", ImageFolder(str(tmp_path / "nope"))),))], tmp_path / "idx")
    with pytest.raises(KeyError, match="unknown eval set"):
        evalsets.get("no-such-set")


def test_unreadable_images_are_counted_and_listed(tmp_path, emoji_paths):
    evalset = _folder_set(tmp_path / "set", emoji_paths[:5])
    (tmp_path / "set" / "class0" / "broken.png").write_bytes(emoji_paths[0].read_bytes()[:100])
    (tmp_path / "set" / "class1" / "text.jpg").write_bytes(b"<html>not an image</html>")
    report = build_index([evalset], tmp_path / "idx")
    errors = report.unreadable["folder/test"]
    assert sorted(e["key"] for e in errors) == ["class0/broken.png", "class1/text.jpg"]
    manifest = json.loads((tmp_path / "idx" / "index.json").read_text())
    info = manifest["sets"]["folder"]["splits"]["test"]
    assert (info["images"], info["hashed"], len(info["unreadable"])) == (7, 5, 2)
    assert len(EvalIndex.load(tmp_path / "idx")) == 5


def test_only_changed_splits_are_reindexed(tmp_path, emoji_paths):
    a = _folder_set(tmp_path / "a", emoji_paths[:8], "a")
    b = _folder_set(tmp_path / "b", emoji_paths[8:16], "b")
    first = build_index([a, b], tmp_path / "idx")
    assert sorted(first.reindexed) == [("a", "test"), ("b", "test")]
    again = build_index([a, b], tmp_path / "idx")
    assert again.reindexed == [] and sorted(again.reused) == [("a", "test"), ("b", "test")]
    # change the bytes of one image of b (same file name): only b is re-indexed
    victim = sorted((tmp_path / "b").rglob("*.png"))[0]
    Image.open(emoji_paths[30]).save(victim)
    third = build_index([a, b], tmp_path / "idx")
    assert third.reindexed == [("b", "test")] and third.reused == [("a", "test")]
    index = EvalIndex.load(tmp_path / "idx")
    assert index.match(hash_image_bytes(emoji_paths[30].read_bytes())[0], 0)[0].eval_set == "b"
    # other hash settings: nothing reused
    fourth = build_index([a, b], tmp_path / "idx", HashSettings(jpeg_draft=None))
    assert fourth.reused == []


def test_modes_select_splits_and_match_fields(tmp_path, emoji_paths):
    train_root, test_root = tmp_path / "train", tmp_path / "test"
    _folder_set(train_root, emoji_paths[:10])
    _folder_set(test_root, emoji_paths[10:20])
    evalset = EvalSet("demo", (Split("train", ImageFolder(str(train_root)), "train"),
                               Split("test", ImageFolder(str(test_root)), "test")))
    build_index([evalset], tmp_path / "idx")
    train_hash = hash_image_bytes(emoji_paths[0].read_bytes())[0]
    test_hash = hash_image_bytes(emoji_paths[10].read_bytes())[0]
    full = EvalIndex.load(tmp_path / "idx", mode="train+test")
    assert [m.split for m in full.match(train_hash, 0)] == ["train"]
    assert full.with_mode("test").match(train_hash, 0) == []
    assert [m.split for m in full.with_mode("test").match(test_hash, 0)] == ["test"]
    assert full.with_mode("none").match(test_hash, 64) == []
    match = full.match(test_hash, 0)[0]
    assert match == Match(0, "demo", "test", f"class0/{emoji_paths[10].name}", "phash")
    assert eval_duplicate_fields([match]) == {"eval_set": "demo", "eval_split": "test",
                                              "eval_key": match.eval_key, "eval_distance": 0.0}


def test_radius_boundary_and_mirror_signal(tmp_path, emoji_paths):
    _folder_set(tmp_path / "s", emoji_paths[:20])
    build_index([EvalSet("s", (Split("test", ImageFolder(str(tmp_path / "s"))),))], tmp_path / "idx")
    index = EvalIndex.load(tmp_path / "idx")
    image = Image.open(io.BytesIO(emoji_paths[3].read_bytes()))
    h, mirror = hash_image_bytes(emoji_paths[3].read_bytes())
    near = h ^ 0b1111_1111  # 8 bits away from the eval image
    hits = [m for m in index.match(near, 8) if m.eval_key.endswith(emoji_paths[3].name)]
    assert hits and hits[0].distance == 8
    assert not [m for m in index.match(near, 7) if m.eval_key.endswith(emoji_paths[3].name)]
    buffer = io.BytesIO()
    image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(buffer, "PNG")
    mirrored = hash_image_bytes(buffer.getvalue())[0]
    assert mirrored == mirror  # the mirror signal is the hash of the mirrored image
    if mirrored != h:  # a non-symmetric emoji: found through the mirror signal
        best = index.match(mirrored, 0)
        assert best and best[0].signal == "mirror" and best[0].eval_key.endswith(emoji_paths[3].name)


def test_index_pickles_compactly_and_checks_settings(tmp_path, emoji_paths):
    _folder_set(tmp_path / "s", emoji_paths)
    build_index([EvalSet("s", (Split("test", ImageFolder(str(tmp_path / "s"))),))], tmp_path / "idx")
    index = EvalIndex.load(tmp_path / "idx")
    index.match(0, 8)  # build search tables
    blob = pickle.dumps(index)
    assert len(blob) < 8_000  # 40 images: hashes + keys, no search tables
    again = pickle.loads(blob)
    h = hash_image_bytes(emoji_paths[5].read_bytes())[0]
    assert again.match(h, 4) == index.match(h, 4) != []
    index.check_settings(HashSettings())
    with pytest.raises(HashSettingsMismatch):
        index.check_settings({"algorithm": "phash", "hash_size": 8, "highfreq_factor": 4, "jpeg_draft": None})
    with pytest.raises(HashSettingsMismatch, match="flatten_alpha"):
        index.check_settings(HashSettings(flatten_alpha=False))


def test_demo_sets_are_registered(demo_data):
    assert {"mnist", "emoji"} <= set(evalsets.names())
    mnist = evalsets.get("mnist")
    train, test = mnist.items("train"), mnist.items("test")
    assert len(train) + len(test) == 10_000
    assert not {i.key for i in train} & {i.key for i in test}
    assert 0.15 < len(test) / 10_000 < 0.25
    emoji = evalsets.get("emoji")
    assert {i.label for i in emoji.items("test")} >= {"Flags", "Smileys & Emotion"}


def test_ways_says_which_hash_is_within_the_radius():
    """The rule: as it is when the corpus pHash is within the radius of the eval image's pHash,
    mirrored when within the radius of its mirror's; both, or neither."""
    index = EvalIndex(DEFAULT_SETTINGS, [("s", "test", "test")], np.zeros(1, np.int32), ["k"],
                      np.array([0], np.uint64), np.array([0xFF], np.uint64))
    assert index.ways(0b1, 0, 1) == (True, False)      # 1 bit from the pHash, 7 from the mirror
    assert index.ways(0x7F, 0, 1) == (False, True)     # 7 bits from the pHash, 1 from the mirror
    assert index.ways(0x0F, 0, 4) == (True, True)      # 4 from each
    assert index.ways(0x0F, 0, 3) == (False, False)
