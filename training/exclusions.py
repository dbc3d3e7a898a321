"""Pairs that training skips, listed by key in parquet files; the shards are never rewritten.

The de-duplication pass over the embedding cache (``training.eval_flags.flag_cached_corpus``)
writes ``eval_flags.parquet``: one row per corpus pair that is a near-duplicate of an
evaluation image (``key``, ``eval_set``, ``eval_split``, ``eval_key``, ``shard``, ...). Training
reads only the ``key`` column of each file given as ``TrainConfig.exclude`` / ``--exclude``,
once, at the start of the run, and the readers drop those pairs before batching.

Matching is on the key alone. Keys are the curated sample keys (``__key__`` in the shards,
the manifest's ``key`` column, the keys of the embedding cache), and they are unique within
one curated corpus: the curation pipeline rejects every later copy of a key (``duplicate
keys``, a GroupByKey on the key) and ``curation.manifest.build_manifest`` fails the run if a
key appears twice among the kept samples. The flags' ``shard`` column is deliberately not
used: it holds the shard's path at flagging time, which changes when a corpus is moved.
Training on shards of *several* corpora at once can make keys collide (img2dataset keys are
shard and row numbers); a flagged key then drops every pair carrying it, and ``train`` warns.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq


def load_exclusions(paths: Iterable[str | Path]) -> frozenset[str]:
    """The union of the ``key`` columns of ``paths`` (other columns ignored, nulls dropped).

    A missing or unreadable file, a file without a ``key`` column, or a ``key`` column that
    does not hold strings is a ``ValueError`` naming the file.
    """
    keys: set[str] = set()
    for item in paths:
        path = Path(item)
        if not path.is_file():
            raise ValueError(f"{path}: exclusion file does not exist (or is not a file)")
        try:
            names = pq.read_schema(path).names
        except Exception as err:  # pyarrow raises several types for a file that is not parquet
            raise ValueError(f"{path}: unreadable exclusion file ({err})") from err
        if "key" not in names:
            raise ValueError(f"{path}: exclusion file has no 'key' column (columns: {names})")
        column = pq.read_table(path, columns=["key"]).column("key")
        if pa.types.is_dictionary(column.type) and pa.types.is_string(column.type.value_type):
            column = column.cast(pa.string())
        # with no value, any type: pandas writes an empty `key` column (dedup's flags when nothing
        # was flagged) as double or null
        if column.null_count < len(column) and not (pa.types.is_string(column.type)
                                                     or pa.types.is_large_string(column.type)):
            raise ValueError(f"{path}: 'key' column holds {column.type}, not strings (curated sample keys)")
        keys.update(k for k in column.to_pylist() if k is not None)
    return frozenset(keys)


def exclusion_digest(keys: Iterable[str]) -> str:
    """sha256 of the sorted keys, one per line: the same set gives the same digest, whatever the files."""
    return hashlib.sha256("".join(f"{k}\n" for k in sorted(keys)).encode("utf-8")).hexdigest()
