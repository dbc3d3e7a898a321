"""Eval images' verification keypoints, computed once when the eval index is built.

Why: at an index of 82k eval images, SIFT on the *eval* side of each candidate pair was about
half of all verification time (``bench/bench_dedup_scale.py``; a corpus image meets ~3 eval
images, each prepared again unless a worker's small cache still holds it). Those keypoints are a
pure function of the eval image, so ``litflow dedup index`` computes them with the hashes and
verification reads them instead: SIFT then runs on the corpus image only, and every decision is
the same (the same keypoints; checked by ``tests/test_dedup_feature_store.py``).

The mirrored eval image's keypoints are stored too. A pHash candidate is checked mirrored when the
corpus image's pHash is near the eval image's mirror hash, which for a near-symmetric icon is
as often as not; at 82k eval images SIFT on those mirrors was 31 % of verification time on held-out
split 1 of ``bench/bench_dedup_scale.py``, more than SIFT on the corpus images. SIFT on a
mirrored image is not the mirror of SIFT on the image (the pyramid keeps every other pixel,
counted from the left), so they are computed from the mirrored pixels, as verification would.

On disk, beside ``splits/SET__SPLIT.parquet``, three files per split and way round, rows in the
parquet's order::

    features/SET__SPLIT.points.f32       x, y, orientation, size per keypoint (float32 x 4)
    features/SET__SPLIT.descriptors.u8   SIFT descriptor per keypoint (uint8 x 128, lossless)
    features/SET__SPLIT.offsets.npy      int64, rows + 1: row r's keypoints are [o[r], o[r+1])
    features/SET__SPLIT.mirror.*         the same three for the mirrored image

``index.json`` records the file stem per split and :func:`dedup.verify.features_id` (side, SIFT
settings, OpenCV version); keypoints made under another id are not used, and verification
computes them as before. A split stored before the mirrors were has its own keypoints read and
its mirrors' computed, until the next ``litflow dedup index`` stores both again. Size: about
25 KB per eval image and way round on icon and game-art data (179 keypoints on average, 144
bytes each): 4.2 GB for 82k images, 5 GB at 100k.

Memory: writing streams (one image's keypoints at a time); reading maps the files, so a worker
holds the pages of the eval images it meets plus a ref -> row table (bounded by the eval sets,
never by the corpus). The files are read through local paths: on a cluster the index folder is a
mount every worker sees, as it already is for the split tables.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow.parquet as pq

from infra.files import replacing

POINTS, DESCRIPTORS, OFFSETS = ".points.f32", ".descriptors.u8", ".offsets.npy"
MIRROR = ".mirror"  # infix of the mirrored image's files
SUFFIXES = tuple(way + suffix for way in (MIRROR, "") for suffix in (POINTS, DESCRIPTORS, OFFSETS))
Keypoints = tuple[np.ndarray, np.ndarray]  # (points float32 (n, 4), descriptors uint8 (n, 128))


def stem_for(split_file: str) -> str:
    """``splits/S__T.parquet`` -> ``features/S__T``."""
    return "features/" + Path(split_file).name.removesuffix(".parquet")


def stem_of(path: Path) -> str | None:
    """The stem a file of ``features/`` belongs to (None: not one of ours)."""
    for suffix in SUFFIXES:  # mirror's first: ".mirror.points.f32" also ends in ".points.f32"
        if path.name.endswith(suffix):
            return "features/" + path.name.removesuffix(suffix)
    return None


def _keypoints(data: bytes | Exception | None) -> tuple[Keypoints, Keypoints]:
    """(the image's keypoints, its mirror's); none for an image that cannot be read."""
    from dedup.verify import Features

    empty = np.zeros((0, 4), np.float32), np.zeros((0, 128), np.uint8)
    if not isinstance(data, bytes):
        return empty, empty
    try:
        features = Features.from_bytes(data)
    except Exception:  # noqa: BLE001 - undecodable: the index records it as such; no keypoints
        return empty, empty
    return features.arrays(), features.mirrored().arrays()


def _computed(blobs: Iterable[bytes | Exception | None], workers: int) -> Iterator[tuple[Keypoints, Keypoints]]:
    if workers <= 1:
        yield from map(_keypoints, blobs)
        return
    import multiprocessing

    # imap keeps the input order, so the files are the same bytes whatever the worker count
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_keypoints, blobs, chunksize=16)


class _Writer:
    """One way round's three files, appended to image by image."""

    def __init__(self, stack: ExitStack, base: Path):
        self.base, self.offsets = base, [0]

        def replaced_on_exit(suffix: str):  # written to a temporary file, moved into place when the stack closes
            return stack.enter_context(open(stack.enter_context(replacing(Path(str(base) + suffix))), "wb"))

        self.points, self.descriptors = replaced_on_exit(POINTS), replaced_on_exit(DESCRIPTORS)

    def add(self, keypoints: Keypoints) -> None:
        points, descriptors = keypoints
        self.points.write(np.ascontiguousarray(points, np.float32).tobytes())
        self.descriptors.write(np.ascontiguousarray(descriptors, np.uint8).tobytes())
        self.offsets.append(self.offsets[-1] + len(points))

    def finish(self) -> None:
        with replacing(Path(str(self.base) + OFFSETS)) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, np.asarray(self.offsets, np.int64))


def write_split(out: Path, stem: str, blobs: Iterable[bytes | Exception | None], workers: int = 1) -> int:
    """Compute and write the keypoints of one split's images and of their mirrors (in row order);
    returns the count of the images' own keypoints."""
    (out / stem).parent.mkdir(parents=True, exist_ok=True)
    for way in ("", MIRROR):  # until the new offsets are written, the split is not there (not half old, half new)
        Path(str(out / stem) + way + OFFSETS).unlink(missing_ok=True)
    with ExitStack() as stack:
        direct, mirror = _Writer(stack, out / stem), _Writer(stack, out / (stem + MIRROR))
        for own, mirrored in _computed(blobs, workers):
            direct.add(own)
            mirror.add(mirrored)
    # offsets last: a split whose offsets are there was written whole
    direct.finish()
    mirror.finish()
    return direct.offsets[-1]


def present(out: Path, stem: str, ways: tuple[str, ...] = ("", MIRROR)) -> bool:
    """Are the files of these ways round there (by default both: what a build writes)?"""
    return all((out / (stem + way + suffix)).exists() for way in ways for suffix in (POINTS, DESCRIPTORS, OFFSETS))


def _mapped(path: Path, dtype, width: int) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.zeros((0, width), dtype)  # mmap refuses an empty file
    return np.memmap(path, dtype=dtype, mode="r").reshape(-1, width)


class FeatureStore:
    """``store(ref, mirrored=False) -> (points, descriptors) | None``: an eval image's stored
    keypoints, or its mirror's.

    Opened lazily where it is used (a Beam worker), so it pickles as a path. None for an image
    the index holds no keypoints for (an index built before them, or under another
    :func:`dedup.verify.features_id`): verification then computes them.
    """

    def __init__(self, index_dir: str | Path):
        self.index_dir = Path(index_dir)
        self._rows: dict[str, tuple[int, int]] | None = None
        self._splits: list[dict[bool, tuple[np.ndarray, np.ndarray, np.ndarray]]] = []  # per way round

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
                    if not info.features:
                        continue
                    # a split stored before the mirrors were: its own keypoints serve, the mirrors' are computed
                    ways = {mirrored: self._mapped_way(info.features + way)
                            for mirrored, way in ((False, ""), (True, MIRROR))
                            if present(self.index_dir, info.features, (way,))}
                    if False not in ways:
                        continue
                    self._splits.append(ways)
                    refs = pq.read_table(self.index_dir / info.file, columns=["ref"])["ref"].to_pylist()
                    for row, ref in enumerate(refs):
                        rows.setdefault(ref, (len(self._splits) - 1, row))
        self._rows = rows
        return rows

    def _mapped_way(self, stem: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        base = str(self.index_dir / stem)
        return (np.load(base + OFFSETS), _mapped(Path(base + POINTS), np.float32, 4),
                _mapped(Path(base + DESCRIPTORS), np.uint8, 128))

    def __bool__(self) -> bool:
        return bool(self._rows if self._rows is not None else self._open())

    def __call__(self, ref: str, mirrored: bool = False) -> Keypoints | None:
        rows = self._rows if self._rows is not None else self._open()
        where = rows.get(ref)
        if where is None:
            return None
        ways = self._splits[where[0]]
        if mirrored not in ways:
            return None
        offsets, points, descriptors = ways[mirrored]
        start, stop = int(offsets[where[1]]), int(offsets[where[1] + 1])
        return np.array(points[start:stop]), np.array(descriptors[start:stop])
