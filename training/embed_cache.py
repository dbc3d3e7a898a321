"""The embedding cache: the locked image tower runs once per curated image, never again.

Layout, one folder per tower *and* weights+preprocessing hash, one file set per shard::

    ROOT/<tower>-<fingerprint[:16]>/tower.json          name, full fingerprint, dim, preprocessing
    ROOT/<tower>-<fingerprint[:16]>/NAME.npy            (N, dim) L2-normalised, float16 by default
    ROOT/<tower>-<fingerprint[:16]>/NAME.keys.txt       the N keys, in shard order
    ROOT/<tower>-<fingerprint[:16]>/NAME.done.json      written last: count, fingerprint, manifest hash

A shard counts as embedded only when its ``done.json`` exists and matches (so a crash
mid-shard just redoes that shard); under torchrun rank r takes shards r, r+world, ...
Reading checks the tower fingerprint, the key order against the shard manifest and the
shapes, and names the file when anything disagrees: a cache is never silently reused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from curation.shards import read_shard
from training.image_towers import ImageTower
from training.shard_inputs import manifest_path, read_manifest
from infra.files import file_sha256, replacing


class CacheMismatchError(ValueError):
    """An embedding cache that does not belong to the tower or shard it is used with."""


def tower_dir(root: str | Path, tower: ImageTower) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", tower.name).strip("_")[-60:]
    return Path(root) / f"{safe}-{tower.fingerprint[:16]}"


def _atomic_write(path: Path, write) -> None:
    with replacing(path) as tmp, open(tmp, "wb") as handle:
        write(handle)


def _tower_meta(tower: ImageTower) -> dict:
    return {"tower": tower.name, "fingerprint": tower.fingerprint, "dim": tower.dim,
            "preprocess": tower.preprocess.describe()}


def prepare_dir(root: str | Path, tower: ImageTower) -> Path:
    """Create (or check) the tower's folder; a folder holding another tower's cache is an error."""
    folder = tower_dir(root, tower)
    folder.mkdir(parents=True, exist_ok=True)
    meta_path = folder / "tower.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") != tower.fingerprint:
            raise CacheMismatchError(f"{meta_path}: cache of tower {meta.get('tower')!r} "
                                     f"({str(meta.get('fingerprint'))[:16]}), not of {tower.name!r} ({tower.fingerprint[:16]})")
    else:
        data = json.dumps(_tower_meta(tower), indent=2, sort_keys=True).encode()
        try:
            _atomic_write(meta_path, lambda h: h.write(data))
        except FileNotFoundError:  # another rank renamed the same temp file first
            pass
    return folder


def _shard_files(folder: Path, shard: Path) -> tuple[Path, Path, Path]:
    stem = shard.stem
    return folder / f"{stem}.npy", folder / f"{stem}.keys.txt", folder / f"{stem}.done.json"


def is_embedded(folder: Path, shard: Path, fingerprint: str) -> bool:
    done = _shard_files(folder, shard)[2]
    if not done.exists():
        return False
    meta = json.loads(done.read_text())
    return meta.get("fingerprint") == fingerprint and meta.get("manifest_sha256") == file_sha256(manifest_path(shard))


@torch.no_grad()
def embed_shard(tower: ImageTower, shard: Path, folder: Path, batch_size: int = 64,
                dtype: str = "float16", device: torch.device = torch.device("cpu")) -> int:
    """Embed one curated shard; returns the number of images."""
    keys = read_manifest(shard, ("key",))["key"]
    wanted = set(keys)
    features: dict[str, np.ndarray] = {}
    batch_keys: list[str] = []
    batch: list[np.ndarray] = []

    def flush():
        x = torch.from_numpy(np.stack(batch)).to(device)
        out = F.normalize(tower.encode(x).float(), dim=-1).cpu().numpy()
        features.update(zip(batch_keys, out))
        batch_keys.clear()
        batch.clear()

    for sample in read_shard(shard):
        key = sample["__key__"]
        if key not in wanted:
            raise ValueError(f"{shard}: sample {key!r} is not in the manifest {manifest_path(shard).name}")
        if "jpg" not in sample:
            raise ValueError(f"{shard}: sample {key!r} has no image (.jpg)")
        try:
            batch.append(tower.preprocess.decode(sample["jpg"]))
        except Exception as err:
            raise ValueError(f"{shard}: sample {key!r}: image does not decode ({err})") from err
        batch_keys.append(key)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    missing = [k for k in keys if k not in features]
    if missing:
        raise ValueError(f"{shard}: {len(missing)} manifest key(s) have no image in the tar, e.g. {missing[:3]}")
    matrix = np.stack([features[k] for k in keys]).astype(dtype)
    npy, keys_txt, done = _shard_files(folder, shard)
    _atomic_write(npy, lambda h: np.save(h, matrix))
    _atomic_write(keys_txt, lambda h: h.write("".join(f"{k}\n" for k in keys).encode()))
    meta = {"shard": str(shard), "count": len(keys), "dim": int(matrix.shape[1]), "dtype": dtype,
            "fingerprint": tower.fingerprint, "manifest_sha256": file_sha256(manifest_path(shard))}
    _atomic_write(done, lambda h: h.write(json.dumps(meta, indent=2, sort_keys=True).encode()))
    return len(keys)


def embed_shards(tower: ImageTower, shards: list[Path], root: str | Path, batch_size: int = 64,
                 dtype: str = "float16", rank: int = 0, world: int = 1,
                 device: torch.device = torch.device("cpu")) -> dict:
    """Embed this rank's share of ``shards`` (shard i goes to rank i % world), skipping done ones."""
    if tower.module is not None:
        tower.module.to(device).eval()
    folder = prepare_dir(root, tower)
    report = {"dir": str(folder), "embedded": [], "skipped": [], "images": 0}
    for index, shard in enumerate(shards):
        if index % world != rank:
            continue
        if is_embedded(folder, shard, tower.fingerprint):
            report["skipped"].append(shard.name)
            continue
        report["images"] += embed_shard(tower, shard, folder, batch_size, dtype, device)
        report["embedded"].append(shard.name)
    return report


@dataclass(frozen=True)
class EmbeddingCache:
    folder: Path
    fingerprint: str
    dim: int
    tower: str

    def load(self, shard: Path) -> tuple[np.ndarray, list[str]]:
        """(N, dim) embeddings of a shard (memory-mapped), aligned with its manifest's keys."""
        npy, keys_txt, done = _shard_files(self.folder, shard)
        if not done.exists():
            raise CacheMismatchError(f"{done}: shard {shard} is not in the embedding cache (run `litflow embed`)")
        meta = json.loads(done.read_text())
        if meta.get("fingerprint") != self.fingerprint:
            raise CacheMismatchError(f"{done}: embedded by another tower ({str(meta.get('fingerprint'))[:16]})")
        keys = keys_txt.read_text().splitlines()
        manifest_keys = read_manifest(shard, ("key",))["key"]
        if keys != manifest_keys:
            raise CacheMismatchError(f"{keys_txt}: keys do not match {manifest_path(shard)} "
                                     "(the shard changed after it was embedded: run `litflow embed` again)")
        matrix = np.load(npy, mmap_mode="r")
        if matrix.shape != (len(keys), self.dim):
            raise CacheMismatchError(f"{npy}: shape {matrix.shape}, expected ({len(keys)}, {self.dim})")
        return matrix, keys


def open_cache(root: str | Path, tower: ImageTower) -> EmbeddingCache:
    """The cache of ``tower`` under ``root`` (or ``root`` itself when it is a tower folder)."""
    root = Path(root)
    folder = root if (root / "tower.json").exists() else tower_dir(root, tower)
    meta_path = folder / "tower.json"
    if not meta_path.exists():
        others = sorted(p.parent.name for p in root.glob("*/tower.json"))
        raise CacheMismatchError(f"{folder}: no embedding cache for tower {tower.name!r} "
                                 f"(fingerprint {tower.fingerprint[:16]}); caches under {root}: {others or 'none'}")
    meta = json.loads(meta_path.read_text())
    if meta.get("fingerprint") != tower.fingerprint:
        raise CacheMismatchError(f"{meta_path}: cache made by tower {meta.get('tower')!r} "
                                 f"({str(meta.get('fingerprint'))[:16]}), not by {tower.name!r} ({tower.fingerprint[:16]})")
    return EmbeddingCache(folder, tower.fingerprint, int(meta["dim"]), meta["tower"])
