"""Eval images' verification keypoints, computed once when the eval index is built.

Why: at an index of 82k eval images, SIFT on the *eval* side of each candidate pair was about
half of all verification time (``bench/bench_dedup_scale.py``; a corpus image meets ~3 eval
images, each prepared again unless a worker's small cache still holds it). Those keypoints are a
pure function of the eval image, so ``litflow dedup index`` computes them with the hashes and
verification reads them instead: SIFT then runs on the corpus image only, and every decision is
the same (the same keypoints; checked by ``tests/test_dedup_feature_store.py``).

On disk, beside ``splits/SET__SPLIT.parquet``, three files per split, rows in the parquet's order::

    features/SET__SPLIT.points.f32       x, y, orientation, size per keypoint (float32 x 4)
    features/SET__SPLIT.descriptors.u8   SIFT descriptor per keypoint (uint8 x 128, lossless)
    features/SET__SPLIT.offsets.npy      int64, rows + 1: row r's keypoints are [o[r], o[r+1])

``index.json`` records the file stem per split and :func:`dedup.verify.features_id` (side, SIFT
settings, OpenCV version); keypoints made under another id are not used, and verification
computes them as before. Size: about 25 KB per eval image on icon and game-art data
(179 keypoints on average, 144 bytes each), 2.6 GB at 100k.

Memory: writing streams (one image's keypoints at a time); reading maps the files, so a worker
holds the pages of the eval images it meets plus a ref -> row table (bounded by the eval sets,
never by the corpus). The files are read through local paths: on a cluster the index folder is a
mount every worker sees, as it already is for the split tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow.parquet as pq

from infra.files import replacing

POINTS, DESCRIPTORS, OFFSETS = ".points.f32", ".descriptors.u8", ".offsets.npy"


def stem_for(split_file: str) -> str:
    """``splits/S__T.parquet`` -> ``features/S__T``."""
    return "features/" + Path(split_file).name.removesuffix(".parquet")


def stem_of(path: Path) -> str | None:
    """The stem a file of ``features/`` belongs to (None: not one of ours)."""
    for suffix in (POINTS, DESCRIPTORS, OFFSETS):
        if path.name.endswith(suffix):
            return "features/" + path.name.removesuffix(suffix)
    return None


def _keypoints(data: bytes | Exception | None) -> tuple[np.ndarray, np.ndarray]:
    from dedup.verify import Features

    empty = np.zeros((0, 4), np.float32), np.zeros((0, 128), np.uint8)
    if not isinstance(data, bytes):
        return empty
    try:
        return Features.from_bytes(data).arrays()
    except Exception:  # noqa: BLE001 - undecodable: the index records it as such; no keypoints
        return empty


def _computed(blobs: Iterable[bytes | Exception | None], workers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    if workers <= 1:
        yield from map(_keypoints, blobs)
        return
    import multiprocessing

    # imap keeps the input order, so the files are the same bytes whatever the worker count
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_keypoints, blobs, chunksize=16)


def write_split(out: Path, stem: str, blobs: Iterable[bytes | Exception | None], workers: int = 1) -> int:
    """Compute and write the keypoints of one split's images (in row order); returns the count."""
    (out / stem).parent.mkdir(parents=True, exist_ok=True)
    offsets = [0]
    with replacing(out / (stem + POINTS)) as points_tmp, replacing(out / (stem + DESCRIPTORS)) as desc_tmp:
        with open(points_tmp, "wb") as points_file, open(desc_tmp, "wb") as desc_file:
            for points, descriptors in _computed(blobs, workers):
                points_file.write(np.ascontiguousarray(points, np.float32).tobytes())
                desc_file.write(np.ascontiguousarray(descriptors, np.uint8).tobytes())
                offsets.append(offsets[-1] + len(points))
    with replacing(out / (stem + OFFSETS)) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, np.asarray(offsets, np.int64))
    return offsets[-1]


def present(out: Path, stem: str) -> bool:
    return all((out / (stem + suffix)).exists() for suffix in (POINTS, DESCRIPTORS, OFFSETS))


def _mapped(path: Path, dtype, width: int) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.zeros((0, width), dtype)  # mmap refuses an empty file
    return np.memmap(path, dtype=dtype, mode="r").reshape(-1, width)


class FeatureStore:
    """``store(ref) -> (points, descriptors) | None``: an eval image's stored keypoints.

    Opened lazily where it is used (a Beam worker), so it pickles as a path. None for an image
    the index holds no keypoints for (an index built before them, or under another
    :func:`dedup.verify.features_id`): verification then computes them.
    """

    def __init__(self, index_dir: str | Path):
        self.index_dir = Path(index_dir)
        self._rows: dict[str, tuple[int, int]] | None = None
        self._splits: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def __getstate__(self):
        return {"index_dir": self.index_dir, "_rows": None, "_splits": []}

    def _open(self) -> dict[str, tuple[int, int]]:
        from dedup.index import read_manifest
        from dedup.verify import features_id

        rows: dict[str, tuple[int, int]] = {}
        manifest = read_manifest(self.index_dir)
        if manifest.features_id == features_id():
            for set_name in sorted(manifest.sets):
                for _, info in sorted(manifest.sets[set_name].splits.items()):
                    if not info.features or not present(self.index_dir, info.features):
                        continue
                    base = self.index_dir / info.features
                    self._splits.append((np.load(str(base) + OFFSETS), _mapped(Path(str(base) + POINTS), np.float32, 4),
                                         _mapped(Path(str(base) + DESCRIPTORS), np.uint8, 128)))
                    refs = pq.read_table(self.index_dir / info.file, columns=["ref"])["ref"].to_pylist()
                    for row, ref in enumerate(refs):
                        rows.setdefault(ref, (len(self._splits) - 1, row))
        self._rows = rows
        return rows

    def __bool__(self) -> bool:
        return bool(self._rows if self._rows is not None else self._open())

    def __call__(self, ref: str) -> tuple[np.ndarray, np.ndarray] | None:
        rows = self._rows if self._rows is not None else self._open()
        where = rows.get(ref)
        if where is None:
            return None
        offsets, points, descriptors = self._splits[where[0]]
        start, stop = int(offsets[where[1]]), int(offsets[where[1] + 1])
        return np.array(points[start:stop]), np.array(descriptors[start:stop])
