"""Duplicates inside the corpus: exact (same image bytes) and near (pHash within a radius).

Groups are connected components of the "is a duplicate of" relation (union-find over the pairs
that :class:`dedup.search.HammingIndex` finds when the corpus is searched against itself), so a
chain a~b~c is one group even when a and c are further apart than the radius. The first member
of a group (in key order) is the one kept when removal is asked for.

:func:`duplicate_groups` reports the groups (``litflow dedup report``); :func:`duplicates_to_drop`
says which keys to remove and why, for the curation pipeline's optional ``corpus_dedup`` step
(``--set corpus_dedup.remove="exact"`` or ``"near"``).
"""

from __future__ import annotations

from collections.abc import Iterable

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


REMOVE_MODES = ("none", "exact", "near")


def duplicates_to_drop(items: Iterable[tuple[str, str | None, int | None]], mode: str,
                       radius: int = 4) -> dict[str, tuple[str, int | None, str]]:
    """Which corpus items to remove: ``{dropped key: (kept key, pHash distance, kind)}``.

    ``items`` are ``(key, sha256, phash)`` with unique keys, in any order. ``mode``:

    * ``none`` — nothing is dropped;
    * ``exact`` — items with the same sha256 (same image bytes) form a group;
    * ``near`` — :func:`duplicate_groups` with ``radius`` (union-find over pHash pairs within
      the radius; same bytes have distance 0, so exact copies are grouped too).

    In every group the first key (in key order) is kept and the others are dropped. ``kind`` is
    ``exact`` when a dropped item has the kept item's sha256, else ``near``; the distance is to
    the kept item's pHash (``None`` when either has none), so in a chain a~b~c it may exceed the
    radius. Items without a sha256 (``exact``) or a pHash (``near``) are never dropped. The
    answer depends only on the set of items, not their order.
    """
    if mode not in REMOVE_MODES:
        raise ValueError(f"remove mode must be one of {', '.join(REMOVE_MODES)}, not {mode!r}")
    rows = sorted(items, key=lambda row: row[0])
    if mode == "none" or not rows:
        return {}
    keys = [row[0] for row in rows]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicates_to_drop: keys must be unique")
    sha = {key: digest for key, digest, _ in rows}
    phash = {key: value for key, _, value in rows}

    def distance(a: str, b: str) -> int | None:
        if phash[a] is None or phash[b] is None:
            return None
        return (int(phash[a]) ^ int(phash[b])).bit_count()

    drop: dict[str, tuple[str, int | None, str]] = {}
    if mode == "exact":
        first: dict[str, str] = {}
        for key in keys:  # key order: the first key with given bytes is kept
            digest = sha[key]
            if digest is None:
                continue
            if digest in first:
                drop[key] = (first[digest], distance(key, first[digest]), "exact")
            else:
                first[digest] = key
        return drop
    hashed = [key for key in keys if phash[key] is not None]
    groups = duplicate_groups(hashed, [sha[k] for k in hashed],
                              np.array([int(phash[k]) for k in hashed], dtype=np.uint64), radius)
    if groups.empty:
        return drop
    kept_of_group = groups[groups["keep"]].set_index("group")["key"].to_dict()
    for group, key, keep, dist in zip(groups["group"], groups["key"], groups["keep"], groups["distance_to_kept"]):
        if keep:
            continue
        kept = kept_of_group[group]
        kind = "exact" if sha[key] is not None and sha[key] == sha[kept] else "near"
        drop[key] = (kept, int(dist), kind)
    return drop


def drop_detail(kept_key: str, distance: int | None, kind: str) -> str:
    """The ``detail`` of a ``corpus_duplicate`` rejection; starts with the kind (the manifest
    counts per kind from it)."""
    if kind == "exact":
        return f"exact duplicate of {kept_key}"
    return f"near duplicate of {kept_key} (pHash distance {distance})"
