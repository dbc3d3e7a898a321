"""Embedding cache: once per image, aligned by key, resumable, never reused for another tower."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from curation.shards import read_shard, write_shard
from infra.contract import empty_pair
from tests.demo_shards import write_demo_shards
from training.embed_cache import CacheMismatchError, embed_shards, open_cache
from training.image_towers import build_image_tower
from training.shard_inputs import read_manifest, resolve_shards


@pytest.fixture(scope="module")
def shards(demo_data, tmp_path_factory):
    return write_demo_shards(demo_data.cache, demo_data.catalogue, tmp_path_factory.mktemp("shards"), 3, 16)


def _direct(tower, shard):
    samples = list(read_shard(shard))
    x = torch.from_numpy(np.stack([tower.preprocess.decode(s["jpg"]) for s in samples]))
    with torch.no_grad():
        return [s["__key__"] for s in samples], F.normalize(tower.encode(x), dim=-1).numpy()


def test_cache_matches_tower_key_by_key_and_resumes(shards, tmp_path):
    tower = build_image_tower("tiny")
    report = embed_shards(tower, shards, tmp_path, batch_size=5, dtype="float32")
    assert report["embedded"] == [s.name for s in shards] and report["images"] == 48
    cache = open_cache(tmp_path, tower)
    for shard in shards:
        matrix, keys = cache.load(shard)
        direct_keys, direct = _direct(tower, shard)
        assert keys == direct_keys == read_manifest(shard, ("key",))["key"]
        np.testing.assert_allclose(matrix, direct, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    # resumable per shard: nothing to do again; a shard whose done-marker is gone is redone alone
    assert embed_shards(tower, shards, tmp_path)["embedded"] == []
    (cache.folder / f"{shards[1].stem}.done.json").unlink()
    again = embed_shards(tower, shards, tmp_path, dtype="float32")
    assert again["embedded"] == [shards[1].name] and len(again["skipped"]) == 2


def test_ranks_split_shards(shards, tmp_path):
    tower = build_image_tower("tiny")
    r0 = embed_shards(tower, shards, tmp_path, rank=0, world=2)
    r1 = embed_shards(tower, shards, tmp_path, rank=1, world=2)
    assert r0["embedded"] == [shards[0].name, shards[2].name] and r1["embedded"] == [shards[1].name]


def test_efficientnet_cache_is_the_real_tower(shards, tmp_path):
    tower = build_image_tower("efficientnet-lite0")
    embed_shards(tower, shards[:1], tmp_path, batch_size=16)
    matrix, keys = open_cache(tmp_path, tower).load(shards[0])
    assert matrix.dtype == np.float16 and matrix.shape == (16, 1280)
    _, direct = _direct(tower, shards[0])
    np.testing.assert_allclose(matrix.astype(np.float32), direct, atol=2e-3)
    assert (tmp_path / f"efficientnet-lite0-{tower.fingerprint[:16]}" / "tower.json").exists()


def test_wrong_tower_or_changed_shard_is_an_error(shards, tmp_path):
    tiny = build_image_tower("tiny")
    embed_shards(tiny, shards, tmp_path)
    other = build_image_tower("tiny", pretrained=False, seed=7)
    with pytest.raises(CacheMismatchError, match="no embedding cache for tower"):
        open_cache(tmp_path, other)
    folder = open_cache(tmp_path, tiny).folder
    with pytest.raises(CacheMismatchError, match="tower.json"):
        open_cache(folder, other)  # the tower's own folder, given with the wrong tower
    meta = json.loads((folder / "tower.json").read_text())
    assert meta["fingerprint"] == tiny.fingerprint
    # the shard is rewritten with other keys after embedding: the cache no longer lines up
    changed = tmp_path / "changed"
    samples = [(json.loads(s["json"]) | {"key": s["__key__"] + "x"}, s["jpg"]) for s in read_shard(shards[0])]
    changed_tar = write_shard(changed, shards[0].stem, samples)
    with pytest.raises(CacheMismatchError, match=r"keys\.txt"):
        open_cache(tmp_path, tiny).load(changed_tar)


def test_bad_shards_name_the_file(shards, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tar"):
        resolve_shards([tmp_path / "nope.tar"])
    with pytest.raises(FileNotFoundError, match="no curated shards"):
        resolve_shards([tmp_path])
    empty = write_shard(tmp_path / "e", "00000", [])
    with pytest.raises(ValueError, match=r"00000\.tar: empty shard"):
        embed_shards(build_image_tower("tiny"), [empty], tmp_path / "cache")
    record = empty_pair(key="broken", caption="a truncated jpeg", status="kept")
    jpeg = next(read_shard(shards[0]))["jpg"]
    bad = write_shard(tmp_path / "b", "00001", [(record, jpeg[: len(jpeg) // 3])])
    with pytest.raises(ValueError, match=r"00001\.tar: sample 'broken'"):
        embed_shards(build_image_tower("tiny"), [bad], tmp_path / "cache")
