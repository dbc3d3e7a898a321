"""The eval-match row, "this corpus pair duplicates that eval image": one schema wherever it is written.

The audit report (``matches.parquet``) and the embedding check (``eval_candidates.parquet``,
``eval_flags.parquet``) write these columns first, with these types, and may add their own
after them (refs, captions, ``removed``; ``rank``, ``inliers``, ``shard``). Curation's rejection
rows carry the chosen match inside the pair record (``curation.records``: ``eval_set``,
``eval_split``, ``eval_key``, ``eval_distance`` int32, the verification in ``detail``).

Memory: the frame being written.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from infra.files import replacing

NO_DISTANCE = -1  # proposed by the embedding alone: no pHash distance

MATCH_SCHEMA = pa.schema([
    ("key", pa.string()),          # the corpus pair's key, as in every pair record
    ("eval_set", pa.string()),
    ("eval_split", pa.string()),
    ("eval_key", pa.string()),
    ("signal", pa.string()),       # phash, mirror, embedding, phash+embedding, mirror+embedding
    ("distance", pa.int32()),      # pHash Hamming bits (mirror's when that was closer); NO_DISTANCE
    ("cosine", pa.float32()),      # locked-tower cosine; NaN when the embedding did not propose it
    ("confirmed", pa.bool_()),     # geometric verification said yes
    ("undecided", pa.bool_()),     # verification could not decide (unreadable image, ...)
    ("verification", pa.string()),  # what verification saw, in words
    ("flagged", pa.bool_()),       # confirmed or undecided (every candidate when verification is off)
])
MATCH_FIELDS = tuple(MATCH_SCHEMA.names)
_DTYPES = {"distance": np.int32, "cosine": np.float32, "confirmed": bool, "undecided": bool, "flagged": bool}


def match_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the contract's columns first, in its types; a missing column is an error."""
    missing = [c for c in MATCH_FIELDS if c not in frame.columns]
    if missing:
        raise ValueError(f"eval-match rows lack {missing} (dedup.matches.MATCH_SCHEMA)")
    extra = [c for c in frame.columns if c not in MATCH_FIELDS]
    out = frame[list(MATCH_FIELDS) + extra].copy()
    for column, dtype in _DTYPES.items():
        out[column] = out[column].astype(dtype)
    for column in ("key", "eval_set", "eval_split", "eval_key", "signal", "verification"):
        out[column] = out[column].astype(object)
    return out.reset_index(drop=True)


def write_matches(frame: pd.DataFrame, path) -> None:
    """Write eval-match rows atomically as parquet, the contract's columns typed by MATCH_SCHEMA."""
    frame = match_frame(frame)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.cast(pa.schema([MATCH_SCHEMA.field(n) if n in MATCH_FIELDS else table.schema.field(n)
                                  for n in table.schema.names]))
    with replacing(path) as tmp:
        pq.write_table(table, tmp)
