"""The eval index: pHash + mirror pHash of every image of every split of the eval sets.

Built by ``litflow dedup index`` (:func:`build_index`), loaded by the curation pipeline as a
Beam side input (:meth:`EvalIndex.load`, then :meth:`EvalIndex.match` per record).

On disk, a folder::

    index.json                      settings, and per set/split: role, source, content digest,
                                    image count, unreadable images (key + error)
    splits/SET__SPLIT.parquet       key, ref, label, caption, sha256, phash, mirror, error
    features/SET__SPLIT.*           every image's verification keypoints, and its mirror's (dedup.feature_store)

A split is re-hashed only when its *content digest* changed: sha256 over the hash settings and
every item's key, label, caption and image bytes. Reading bytes is cheap next to decoding and
resizing them, so an unchanged split costs one read pass and no decode.

Memory while building: one split's image bytes at a time (hashing batches them); the keypoints
are streamed to disk.

Modes select which splits count (LiT's ablation, Table 5): ``none`` (nothing matches),
``test`` (splits whose role is ``test``) and ``train+test`` (all splits, LiT's default).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dedup.evalsets import EmptyEvalSet, EvalSet
from dedup.modes import MODES, removes
from dedup.phash import DEFAULT_SETTINGS, HashSettings, check_same_settings, hamming, hash_many_bytes
from dedup.search import HammingIndex
from infra.contract import EVAL_INDEX_FORMAT, EvalIndexManifest, ManifestError
from infra.files import replacing

SIGNALS = ("phash", "mirror")

SPLIT_SCHEMA = pa.schema([
    ("key", pa.string()), ("ref", pa.string()), ("label", pa.string()), ("caption", pa.string()),
    ("sha256", pa.string()), ("phash", pa.uint64()), ("mirror", pa.uint64()), ("error", pa.string()),
])


@dataclass(frozen=True, order=True)
class Match:
    """One corpus image near one eval image (the record fields of ``eval_duplicate``)."""

    distance: int
    eval_set: str
    split: str
    eval_key: str
    signal: str = "phash"  # which eval hash was within the radius: "phash" or "mirror"
    image: int = field(default=-1, compare=False)  # the index's image number (EvalIndex.refs[image])


@dataclass
class BuildReport:
    path: Path
    reindexed: list[tuple[str, str]] = field(default_factory=list)
    reused: list[tuple[str, str]] = field(default_factory=list)
    unreadable: dict[str, list[dict]] = field(default_factory=dict)


def _split_file(set_name: str, split: str) -> str:
    return f"splits/{set_name}__{split}.parquet"


def _read_all(items) -> Iterable[tuple[object, bytes | Exception]]:
    for item in items:
        try:
            yield item, item.read()
        except (OSError, KeyError) as err:
            yield item, err


def _digest(settings: HashSettings, items) -> str:
    h = hashlib.sha256(settings.id.encode())
    for item, data in _read_all(items):
        h.update(json.dumps([item.key, item.label, item.caption]).encode())
        h.update(hashlib.sha256(data).digest() if isinstance(data, bytes) else f"unreadable:{data}".encode())
    return h.hexdigest()


def _hash_split(items, settings: HashSettings) -> tuple[pa.Table, list[bytes | Exception]]:
    """The split's table, and its images' bytes (or read errors) in row order."""
    rows, blobs = [], []
    for item, data in _read_all(items):
        rows.append({"key": item.key, "ref": item.ref, "label": item.label, "caption": item.caption,
                     "sha256": hashlib.sha256(data).hexdigest() if isinstance(data, bytes) else None})
        blobs.append(data)

    def decodable():
        for data in blobs:
            yield data if isinstance(data, bytes) else b""  # b"" fails decoding like the read did

    for row, data, result in zip(rows, blobs, hash_many_bytes(decodable(), settings)):
        if isinstance(data, Exception):
            row.update(phash=None, mirror=None, error=f"unreadable: {type(data).__name__}: {data}")
        elif isinstance(result, Exception):
            row.update(phash=None, mirror=None, error=f"undecodable: {type(result).__name__}: {result}")
        else:
            row.update(phash=result[0], mirror=result[1], error=None)
    return pa.Table.from_pylist(rows, schema=SPLIT_SCHEMA), blobs


def build_index(evalsets: Iterable[EvalSet], out: str | Path, settings: HashSettings = DEFAULT_SETTINGS,
                log: Callable[[str], None] = lambda message: None, features: bool = True,
                workers: int = 1) -> BuildReport:
    """Hash every image of every split into ``out`` (re-using splits whose content is unchanged).

    ``features``: also store every image's verification keypoints and its mirror's
    (:mod:`dedup.feature_store`; about 40 ms an image, on ``workers`` processes), so verification
    runs SIFT on corpus images only. A split whose keypoints are missing or were made under another
    :func:`dedup.verify.features_id` gets them again without being re-hashed.
    """
    from dedup import feature_store
    from dedup.verify import features_id

    out = Path(out)
    current_features = features_id() if features else None
    old = {}
    if (out / EvalIndexManifest.FILE).exists():
        try:
            old = EvalIndexManifest.read(out).model_dump()
        except ManifestError:
            old = {}  # another format: nothing can be reused
        if old.get("settings") != settings.to_dict():
            old = {}  # other settings: nothing can be reused
    (out / "splits").mkdir(parents=True, exist_ok=True)
    report = BuildReport(out)
    manifest = {"format": EVAL_INDEX_FORMAT, "settings": settings.to_dict(), "settings_id": settings.id, "sets": {},
                "features_id": current_features}
    evalsets = list(evalsets)
    if not evalsets:
        raise EmptyEvalSet("no eval sets to index")
    for evalset in evalsets:
        entry = manifest["sets"][evalset.name] = {"description": evalset.description, "splits": {}}
        for split in evalset.splits:
            items = evalset.items(split.name)  # raises EmptyEvalSet for an empty split
            digest = _digest(settings, items)
            file = _split_file(evalset.name, split.name)
            previous = old.get("sets", {}).get(evalset.name, {}).get("splits", {}).get(split.name)
            stem = feature_store.stem_for(file) if features else None
            if previous and previous["digest"] == digest and (out / file).exists():
                table = pq.read_table(out / file)
                report.reused.append((evalset.name, split.name))
                log(f"{evalset.name}/{split.name}: unchanged ({len(items)} images), not re-indexed")
                if stem and not (old.get("features_id") == current_features and previous.get("features") == stem
                                 and feature_store.present(out, stem)):
                    keypoints = feature_store.write_split(out, stem, (d for _, d in _read_all(items)), workers)
                    log(f"{evalset.name}/{split.name}: stored {keypoints} verification keypoints")
            else:
                table, blobs = _hash_split(items, settings)
                with replacing(out / file) as tmp:
                    pq.write_table(table, tmp)
                if stem:
                    keypoints = feature_store.write_split(out, stem, blobs, workers)
                del blobs
                report.reindexed.append((evalset.name, split.name))
                log(f"{evalset.name}/{split.name}: indexed {len(items)} images"
                    + (f", {keypoints} verification keypoints" if stem else ""))
            errors = [{"key": k, "error": e} for k, e in zip(table["key"].to_pylist(), table["error"].to_pylist()) if e]
            if len(errors) == len(items):
                raise EmptyEvalSet(f"eval set {evalset.name!r} split {split.name!r}: none of its "
                                   f"{len(items)} images could be read (first: {errors[0]['error']})")
            report.unreadable[f"{evalset.name}/{split.name}"] = errors
            entry["splits"][split.name] = {
                "role": split.role, "source": split.source.describe(), "digest": digest, "file": file,
                "images": len(items), "hashed": len(items) - len(errors), "unreadable": errors, "features": stem,
            }
    # splits (and keypoints) no longer asked for are removed from the folder
    keep = {s["file"] for e in manifest["sets"].values() for s in e["splits"].values()}
    keep |= {s["features"] for e in manifest["sets"].values() for s in e["splits"].values() if s["features"]}
    for stale in (out / "splits").glob("*.parquet"):
        if f"splits/{stale.name}" not in keep:
            stale.unlink()
    for stale in (out / "features").glob("*") if (out / "features").is_dir() else ():
        if feature_store.stem_of(stale) not in keep:
            stale.unlink()
    # the embedding check's stored vectors (dedup.embedding.stored_vectors_path) of splits no longer there
    digests = {s["digest"][:16] for e in manifest["sets"].values() for s in e["splits"].values()}
    for stale in (out / "embeddings").glob("*/*.npy") if (out / "embeddings").is_dir() else ():
        if stale.stem not in digests:
            stale.unlink()
    EvalIndexManifest.parse(manifest, where=str(out / EvalIndexManifest.FILE)).write(out)
    return report


def read_manifest(path: str | Path) -> EvalIndexManifest:
    """An eval index's ``index.json`` (settings, sets, splits), checked for this litflow's format."""
    path = Path(path)
    if not (path / EvalIndexManifest.FILE).exists():
        raise FileNotFoundError(f"{path} is not an eval index (no index.json): run `litflow dedup index`")
    return EvalIndexManifest.read(path)


def index_settings(path: str | Path) -> HashSettings:
    """The hash settings an eval index was built with (a corpus must be hashed the same way)."""
    return HashSettings.from_dict(read_manifest(path).settings)


class EvalIndex:
    """Hashes of eval images, searchable by Hamming radius; small and picklable (a side input).

    Holds per entry (two per hashed image: its pHash and its mirror's) a uint64 hash and an
    image number, and per image its set/split number and key. The search tables are not
    pickled: they are rebuilt on first use where the index lands.
    """

    def __init__(self, settings: HashSettings, splits: list[tuple[str, str, str]], image_split: np.ndarray,
                 keys: list[str], phash: np.ndarray, mirror: np.ndarray, mode: str = "train+test",
                 manifest: EvalIndexManifest | None = None, refs: list[str] | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.settings, self.splits, self.mode = settings, splits, mode
        self.image_split = np.asarray(image_split, np.int32)
        self.keys = keys
        self.refs = refs or []  # where each image's bytes are (for verification and thumbnails)
        self.phash = np.asarray(phash, np.uint64)
        self.mirror = np.asarray(mirror, np.uint64)
        self.manifest = manifest  # None for an index built in memory (tests)
        active_splits = [i for i, (_, _, role) in enumerate(splits)
                         if removes(mode, role)]
        self.active_images = np.flatnonzero(np.isin(self.image_split, active_splits)).astype(np.int32)
        # entry e < A is the pHash of active image e, entry A + e its mirror
        self._entry_hashes = np.concatenate([self.phash[self.active_images], self.mirror[self.active_images]])
        self._search = HammingIndex(self._entry_hashes)

    @classmethod
    def load(cls, path: str | Path, mode: str = "train+test") -> "EvalIndex":
        path = Path(path)
        manifest = read_manifest(path)
        settings = HashSettings.from_dict(manifest.settings)
        splits, image_split, keys, refs, ph, mi = [], [], [], [], [], []
        for set_name in sorted(manifest.sets):
            for split_name, info in sorted(manifest.sets[set_name].splits.items()):
                table = pq.read_table(path / info.file, columns=["key", "ref", "phash", "mirror", "error"])
                ok = table.filter(pc.is_null(table["error"]))
                splits.append((set_name, split_name, info.role))
                image_split.append(np.full(ok.num_rows, len(splits) - 1, np.int32))
                keys.extend(ok["key"].to_pylist())
                refs.extend(ok["ref"].to_pylist())
                ph.append(ok["phash"].to_numpy())
                mi.append(ok["mirror"].to_numpy())
        return cls(settings, splits, np.concatenate(image_split), keys,
                   np.concatenate(ph), np.concatenate(mi), mode, manifest, refs)

    def with_mode(self, mode: str) -> "EvalIndex":
        return EvalIndex(self.settings, self.splits, self.image_split, self.keys, self.phash,
                         self.mirror, mode, self.manifest, self.refs)

    def __len__(self) -> int:
        return len(self.active_images)

    def check_settings(self, corpus: HashSettings | dict) -> None:
        """Raise :class:`dedup.phash.HashSettingsMismatch` unless the corpus hashed like this index."""
        corpus = corpus if isinstance(corpus, HashSettings) else HashSettings.from_dict(corpus)
        check_same_settings(corpus, self.settings)

    def match_many(self, phashes: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every (query index, image number, distance, signal 0=phash/1=mirror) within ``radius``.

        One row per (query, eval image): the smaller of the two signals' distances (pHash on ties).
        """
        q, entry, dist = self._search.search(np.asarray(phashes, np.uint64), radius)
        active = len(self.active_images)
        signal = (entry >= active).astype(np.uint8)
        image = self.active_images[entry % max(active, 1)] if active else entry
        order = np.lexsort((signal, dist, image, q))
        q, image, dist, signal = q[order], image[order], dist[order], signal[order]
        first = np.ones(len(q), bool)
        first[1:] = (q[1:] != q[:-1]) | (image[1:] != image[:-1])
        return q[first], image[first], dist[first], signal[first]

    def match(self, phash: int, radius: int) -> list[Match]:
        """Eval images within ``radius`` bits of ``phash`` (or of its mirror), nearest first."""
        _, image, dist, signal = self.match_many(np.asarray([phash], np.uint64), radius)
        out = [Match(int(d), self.splits[self.image_split[i]][0], self.splits[self.image_split[i]][1],
                     self.keys[i], SIGNALS[s], int(i)) for i, d, s in zip(image, dist, signal)]
        return sorted(out)

    def ways(self, phash: int, image: int, radius: int) -> tuple[bool, bool]:
        """(as it is, mirrored): whether ``phash`` is within ``radius`` of the eval image's pHash,
        and of its mirror's; which way round verification compares the pair (dedup.verify)."""
        return hamming(self.phash[image], phash) <= radius, hamming(self.mirror[image], phash) <= radius

    def describe(self, image: int) -> tuple[str, str, str]:
        set_name, split, _ = self.splits[self.image_split[image]]
        return set_name, split, self.keys[image]


def eval_duplicate_fields(matches: list[Match]) -> dict:
    """The pair-record fields for the nearest match (``reason`` is ``eval_duplicate``)."""
    best = min(matches)
    return {"eval_set": best.eval_set, "eval_split": best.split, "eval_key": best.eval_key,
            "eval_distance": int(best.distance)}
