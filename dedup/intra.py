"""Duplicates inside the corpus: exact (same image bytes) and near (pHash within a radius).

Groups are connected components of the "is a duplicate of" relation (union-find over the pairs
that :class:`dedup.search.HammingIndex` finds when the corpus is searched against itself), so a
chain a~b~c is one group even when a and c are further apart than the radius. The first member
of a group (in key order) is the one kept when removal is asked for.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dedup.search import HammingIndex


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in zip(a.tolist(), b.tolist()):
        rx, ry = find(x), find(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    return np.array([find(i) for i in range(n)])


def duplicate_groups(keys: list[str], sha256: list[str], phash: np.ndarray, radius: int) -> pd.DataFrame:
    """One row per corpus item that has a duplicate: group, kind, key, distance to the group's first.

    ``kind`` is ``exact`` when every member has the same bytes, else ``near``.
    """
    n = len(keys)
    columns = ["group", "kind", "key", "sha256", "phash", "keep", "distance_to_kept"]
    if n == 0:
        return pd.DataFrame(columns=columns)
    phash = np.asarray(phash, np.uint64)
    q, d, _ = HammingIndex(phash).search(phash, radius)
    pairs = q < d
    qa, da = q[pairs], d[pairs]
    # exact duplicates are pHash-distance 0, so they are already among the pairs
    roots = _components(n, qa, da)
    frame = pd.DataFrame({"root": roots, "key": keys, "sha256": sha256, "phash": phash})
    sizes = frame.groupby("root")["key"].transform("size")
    frame = frame[sizes > 1].sort_values(["root", "key"]).copy()
    if frame.empty:
        return pd.DataFrame(columns=columns)
    frame["group"] = frame["root"].rank(method="dense").astype(int) - 1
    frame["kind"] = np.where(frame.groupby("root")["sha256"].transform("nunique") == 1, "exact", "near")
    first = frame.groupby("root")["key"].transform("first")
    frame["keep"] = frame["key"] == first
    kept_hash = frame.groupby("root")["phash"].transform("first").to_numpy(np.uint64)
    frame["distance_to_kept"] = np.bitwise_count(frame["phash"].to_numpy(np.uint64) ^ kept_hash).astype(int)
    return frame[columns].reset_index(drop=True)
