"""Resolve and validate curated shards before any work starts, naming the bad file.

A curated shard is ``NAME.tar`` + ``NAME.parquet`` (:mod:`curation.shards`). Missing files,
a manifest without rows or without the ``key``/``caption`` columns are errors here, before a
long run wastes time on them.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from curation.shards import list_shards


def resolve_shards(inputs: list[str | Path]) -> list[Path]:
    """Folders expand to their complete shards (name order); files must be existing ``.tar``s."""
    shards: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = list_shards(path)
            if not found:
                raise FileNotFoundError(f"{path}: no curated shards (*.tar) in this folder")
            shards.extend(found)
        elif path.suffix == ".tar":
            if not path.exists():
                raise FileNotFoundError(f"{path}: shard does not exist")
            shards.append(path)
        else:
            raise FileNotFoundError(f"{path}: neither a folder of shards nor a .tar shard")
    if not shards:
        raise FileNotFoundError("no shards given")
    return shards


def manifest_path(shard: Path) -> Path:
    return shard.with_suffix(".parquet")


def read_manifest(shard: Path, columns: tuple[str, ...] = ("key", "caption")) -> dict[str, list]:
    """The manifest's columns for one shard; errors name the shard or manifest file."""
    manifest = manifest_path(shard)
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest}: manifest of shard {shard.name} is missing")
    try:
        table = pq.read_table(manifest)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise ValueError(f"{manifest}: unreadable manifest ({err})") from err
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{manifest}: manifest lacks column(s) {missing}")
    if table.num_rows == 0:
        raise ValueError(f"{shard}: empty shard (its manifest has no rows)")
    if "status" in table.column_names:
        statuses = set(table.column("status").to_pylist()) - {None, "kept"}
        if statuses:
            raise ValueError(f"{manifest}: not a curated shard (rows with status {sorted(statuses)})")
    return {c: table.column(c).to_pylist() for c in columns}
