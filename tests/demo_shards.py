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

from curation.records import KEPT, empty_pair
from curation.shards import write_shard


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
