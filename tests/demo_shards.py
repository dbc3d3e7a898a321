"""Curated shards made from the real demo images (emoji, openclipart), for tests and benchmarks.

Until the curation pipeline has produced a corpus, this writes shards through the project's
own writer (:func:`curation.shards.write_shard`) so that training reads exactly the format
curation will hand it. Images are re-encoded as RGB JPEG (q90, white behind transparency),
keys and captions come from the demo catalogue; the choice of images is sorted by path,
so it is the same on every machine.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
from PIL import Image

from curation.shards import write_shard
from infra.contract import KEPT, empty_pair


def _jpeg(path: Path, max_side: int) -> tuple[bytes, int, int]:
    image = Image.open(path)
    image.draft("RGB", (max_side, max_side))
    image = image.convert("RGBA")
    image.thumbnail((max_side, max_side))
    canvas = Image.new("RGB", image.size, "white")
    canvas.paste(image, mask=image.split()[-1])
    buffer = io.BytesIO()
    canvas.save(buffer, "JPEG", quality=90)
    return buffer.getvalue(), canvas.width, canvas.height


def write_demo_shards(cache: Path, catalogue: Path, out: str | Path, shards: int, per_shard: int,
                      source: str = "emoji", max_side: int = 256, max_bytes: int = 300_000) -> list[Path]:
    """Write ``shards`` curated shards of ``per_shard`` real captioned images from ``source``."""
    frame = pd.read_parquet(catalogue)
    frame = frame[frame["source"] == source].sort_values("path")
    sizes = frame["path"].map(lambda p: (Path(cache) / p).stat().st_size)
    frame = frame[sizes < max_bytes].head(shards * per_shard)
    if len(frame) < shards * per_shard:
        raise ValueError(f"{catalogue}: only {len(frame)} {source} images, {shards * per_shard} asked for")
    rows = list(frame.itertuples())
    paths = []
    for s in range(shards):
        samples = []
        for i, row in enumerate(rows[s * per_shard:(s + 1) * per_shard]):
            data, width, height = _jpeg(Path(cache) / row.path, max_side)
            key = f"{s:05d}{i:04d}"
            record = empty_pair(key=key, url=row.path, caption=row.caption, width=width, height=height,
                                status=KEPT, source_shard="demo")
            samples.append((record, data))
        paths.append(write_shard(out, f"{s:05d}", samples))
    return paths


def write_corpus_json(folder: str | Path, settings=None) -> Path:
    """A ``corpus.json`` (:class:`infra.contract.CorpusManifest`) for shards written by hand into
    ``folder``, every sample counted as kept, recording the hash settings ``settings`` (default:
    the project's) as a curation run would."""
    from curation.config import CurationConfig
    from dedup.phash import DEFAULT_SETTINGS
    from infra.contract import CorpusManifest
    from infra.files import file_sha256

    folder = Path(folder)
    shards = [{"name": tar.name, "samples": pd.read_parquet(tar.with_suffix(".parquet"), columns=["key"]).shape[0],
               "sha256": file_sha256(tar)} for tar in sorted(folder.glob("*.tar"))]
    kept = sum(s["samples"] for s in shards)
    config = CurationConfig()
    return CorpusManifest.parse({
        "preset": config.preset, "config": config.to_dict(), "input": "written by hand (tests)", "inputs": kept,
        "kept": kept, "rejected": {}, "accounting": f"{kept} inputs = {kept} kept + 0 rejected", "stages": {},
        "rare_tokens_k": None, "rare_tokens_threshold_df": None, "valid_pairs": kept,
        "languages": {"kept": {}, "rejected": {}}, "hash_settings": (settings or DEFAULT_SETTINGS).to_dict(),
        "eval_dedup_verify": None, "eval_duplicates": {}, "corpus_duplicates": {"exact": 0, "near": 0},
        "shards": shards, "versions": {}, "code_revision": None,
    }).write(folder)
