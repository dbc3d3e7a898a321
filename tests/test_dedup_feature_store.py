"""Stored verification keypoints: the same keypoints, the same decisions, no SIFT on the eval side."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from dedup import verify as verify_module
from dedup.evalsets import EvalSet, ImageFolder, Split, read_ref
from dedup.feature_store import FeatureStore
from dedup.index import EvalIndex, build_index
from dedup.verify import Features, Verifier
from tests.images import on_white, shard_bytes


@pytest.fixture(scope="module")
def emoji_paths(demo_data):
    return sorted((demo_data.cache / "emoji/img/google/64").glob("1f4*.png"))[:24]


def _evalset(root: Path, paths: list[Path], extra: dict[str, bytes] = {}) -> EvalSet:
    folder = root / "emoji"  # an image folder: one folder per label
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        shutil.copy(path, folder / path.name)
    for name, data in extra.items():
        (folder / name).write_bytes(data)
    return EvalSet("probe", (Split("test", ImageFolder(str(root)), "test"),))


def _sift_calls(monkeypatch) -> list[bool]:
    """Count SIFT detector requests (one per image prepared from pixels, two for a faint retry)."""
    calls: list[bool] = []
    real = verify_module._sift

    def counting(faint: bool = False):
        calls.append(faint)
        return real(faint)

    monkeypatch.setattr(verify_module, "_sift", counting)
    return calls


def test_stored_keypoints_are_the_computed_ones(tmp_path, emoji_paths):
    broken = {"truncated.png": emoji_paths[0].read_bytes()[:200], "not-an-image.png": b"hello"}
    build_index([_evalset(tmp_path / "eval", emoji_paths, broken)], tmp_path / "index")
    manifest = json.loads((tmp_path / "index" / "index.json").read_text())
    assert manifest["features_id"] == verify_module.features_id()
    assert manifest["sets"]["probe"]["splits"]["test"]["features"] == "features/probe__test"
    store = FeatureStore(tmp_path / "index")
    index = EvalIndex.load(tmp_path / "index")
    assert len(index.refs) == len(emoji_paths)  # the two broken files are not in the index
    differs = 0
    for ref in index.refs:
        computed = Features.from_bytes(read_ref(ref))
        for mirrored, want in ((False, computed), (True, computed.mirrored())):
            points, descriptors = store(ref, mirrored)
            np.testing.assert_array_equal(points, want.points)
            np.testing.assert_array_equal(descriptors.astype(np.float32), want.descriptors)  # lossless
            assert len(points) > 0
        # the mirror's keypoints are SIFT's on the mirrored pixels, which are not the image's
        # flipped: the pyramid keeps every other pixel counted from the left
        flipped = {(round(float(computed.rgb.shape[1] - x), 1), round(float(y), 1)) for x, y in computed.points[:, :2]}
        differs += flipped != {(round(float(x), 1), round(float(y), 1)) for x, y in store(ref, True)[0][:, :2]}
    assert differs > 0
    assert store(str(tmp_path / "eval" / "emoji" / "no-such.png")) is None
    # pickles as its path (a Beam side input / DoFn field), and opens again where it lands
    again = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(again(index.refs[3])[1], store(index.refs[3])[1])


def test_verifier_with_the_store_decides_the_same_without_sift_on_eval_images(tmp_path, emoji_paths, monkeypatch):
    build_index([_evalset(tmp_path / "eval", emoji_paths)], tmp_path / "index")
    index = EvalIndex.load(tmp_path / "index")
    originals = {ref: Image.open(ref) for ref in index.refs}
    # copies (mirrored; as a shard stores them) and distinct pairs (a corpus image against another eval image)
    corpus = [(shard_bytes(ImageOps.mirror(on_white(image))), ref) for ref, image in list(originals.items())[:6]]
    corpus += [(shard_bytes(on_white(image)), ref) for ref, image in list(originals.items())[6:12]]
    corpus += [(data, index.refs[(index.refs.index(ref) + 7) % len(index.refs)]) for data, ref in corpus[:8]]
    plain, stored = Verifier(), Verifier(stored=FeatureStore(tmp_path / "index"))
    want = [plain.check(data, ref) for data, ref in corpus]
    calls = _sift_calls(monkeypatch)
    queries = [Features.from_bytes(data) for data, _ in corpus]
    corpus_calls = len(calls)
    got = [stored.check(query, ref, ways=(True, False)) for query, (_, ref) in zip(queries, corpus)]
    assert len(calls) == corpus_calls  # no eval image prepared from pixels
    assert got[6:12] == want[6:12] and [v.confirmed for v in got[6:12]] == [True] * 6
    assert [v.confirmed for v in got[12:]] == [v.confirmed for v in want[12:]] == [False] * 8
    # the mirror's keypoints are stored too: checked mirrored, nothing is computed either
    mirrored = [stored.check(query, ref, ways=(False, True)) for query, (_, ref) in zip(queries[:6], corpus[:6])]
    assert len(calls) == corpus_calls
    assert mirrored == want[:6] and all(v.confirmed and v.mirrored for v in mirrored)


def test_rebuild_reuses_keypoints_and_remakes_them_when_their_id_changes(tmp_path, emoji_paths, monkeypatch):
    evalset = _evalset(tmp_path / "eval", emoji_paths[:6])
    build_index([evalset], tmp_path / "index")
    files = sorted((tmp_path / "index" / "features").iterdir())
    assert [f.name for f in files] == ["probe__test.descriptors.u8", "probe__test.mirror.descriptors.u8",
                                       "probe__test.mirror.offsets.npy", "probe__test.mirror.points.f32",
                                       "probe__test.offsets.npy", "probe__test.points.f32"]
    first = {f.name: f.read_bytes() for f in files}
    calls = _sift_calls(monkeypatch)
    build_index([evalset], tmp_path / "index")
    assert calls == []  # unchanged split, keypoints under the same id: nothing computed
    # keypoints made under another id (another OpenCV, SIFT setting or side) are not used ...
    manifest_file = tmp_path / "index" / "index.json"
    manifest = json.loads(manifest_file.read_text())
    manifest_file.write_text(json.dumps({**manifest, "features_id": "sift-something-else"}))
    index = EvalIndex.load(tmp_path / "index")
    assert FeatureStore(tmp_path / "index")(index.refs[0]) is None
    # ... and a rebuild makes them again, without re-hashing the split, to the same bytes
    report = build_index([evalset], tmp_path / "index")
    assert report.reused == [("probe", "test")] and len(calls) >= 6
    assert {f.name: f.read_bytes() for f in sorted((tmp_path / "index" / "features").iterdir())} == first
    assert FeatureStore(tmp_path / "index")(index.refs[0]) is not None
    # a split stored before the mirrors were (three files): its own keypoints are read, its
    # mirrors' are not there (verification computes them), and a rebuild stores both again
    for mirror_file in (tmp_path / "index" / "features").glob("*.mirror.*"):
        mirror_file.unlink()
    old_store = FeatureStore(tmp_path / "index")
    assert old_store(index.refs[0]) is not None and old_store(index.refs[0], True) is None
    build_index([evalset], tmp_path / "index")
    assert {f.name: f.read_bytes() for f in sorted((tmp_path / "index" / "features").iterdir())} == first
    # an index built without keypoints: none are stored, and verification computes them
    report = build_index([evalset], tmp_path / "bare", features=False)
    assert not (tmp_path / "bare" / "features").exists()
    assert not FeatureStore(tmp_path / "bare")


def test_keypoint_files_do_not_depend_on_worker_count(tmp_path, emoji_paths):
    evalset = _evalset(tmp_path / "eval", emoji_paths[:10])
    build_index([evalset], tmp_path / "one", workers=1)
    build_index([evalset], tmp_path / "two", workers=2)
    for name in ("probe__test.descriptors.u8", "probe__test.offsets.npy", "probe__test.points.f32",
                 "probe__test.mirror.descriptors.u8", "probe__test.mirror.offsets.npy", "probe__test.mirror.points.f32"):
        assert (tmp_path / "one" / "features" / name).read_bytes() == (tmp_path / "two" / "features" / name).read_bytes()


def test_removed_split_takes_its_keypoints_with_it(tmp_path, emoji_paths):
    a = _evalset(tmp_path / "a", emoji_paths[:4])
    b = EvalSet("other", (Split("test", ImageFolder(str(tmp_path / "a")), "test"),))
    build_index([a, b], tmp_path / "index")
    assert {p.name.split(".")[0] for p in (tmp_path / "index" / "features").iterdir()} == {"probe__test", "other__test"}
    build_index([a], tmp_path / "index")
    assert {p.name.split(".")[0] for p in (tmp_path / "index" / "features").iterdir()} == {"probe__test"}
