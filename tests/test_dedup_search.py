"""Multi-index hashing returns exactly what brute force returns, at and around the radius."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from dedup.search import HammingIndex, _radii, brute_force


def _flip(values: np.ndarray, bits: int, rng) -> np.ndarray:
    """Flip exactly ``bits`` distinct bits of each value."""
    out = values.copy()
    for i in range(len(out)):
        for b in rng.choice(64, size=bits, replace=False):
            out[i] ^= np.uint64(1) << np.uint64(b)
    return out


def _sorted(result):
    q, d, dist = result
    order = np.lexsort((d, q))
    return q[order], d[order], dist[order]


@pytest.mark.parametrize("radius", [0, 1, 3, 4, 7, 8, 9, 12])
def test_mih_equals_brute_force_uniform(radius):
    rng = np.random.default_rng(radius)
    db = rng.integers(0, 2**64, 20_000, dtype=np.uint64)
    base = db[rng.integers(0, len(db), 300)]
    # queries at distance radius-1, radius and radius+1 from a database hash, plus random ones
    queries = np.concatenate([_flip(base[:100], max(radius - 1, 0), rng), _flip(base[100:200], radius, rng),
                              _flip(base[200:], radius + 1, rng), rng.integers(0, 2**64, 100, dtype=np.uint64)])
    index = HammingIndex(db)
    got = _sorted(index.search(queries, radius))
    want = _sorted(brute_force(queries, db, radius))
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    # the rule: distance <= radius is found, radius + 1 is not
    found = set(zip(got[0].tolist(), got[1].tolist()))
    assert all((q, int(np.flatnonzero(db == base[q])[0])) in found for q in range(100, 200))
    assert got[2].max(initial=0) <= radius


@pytest.mark.parametrize("m", [3, 4, 5, 8])
def test_every_layout_is_exact_on_clustered_hashes(m):
    """Clustered data (many near copies, like real pHashes): uneven buckets, still exact."""
    rng = np.random.default_rng(7)
    centres = rng.integers(0, 2**64, 50, dtype=np.uint64)
    db = _flip(np.repeat(centres, 80), 3, rng)
    queries = _flip(centres, 2, rng)
    index = HammingIndex(db)
    for radius in (4, 8):
        got = _sorted(index.search(queries, radius, m=m))
        want = _sorted(brute_force(queries, db, radius))
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_pigeonhole_radii_cover_the_radius():
    for m in range(2, 9):
        for r in range(0, 20):
            radii = _radii(m, r)
            # a pair missed by every table differs by >= radius+1 in each substring: total > r
            assert sum(x + 1 for x in radii) == r + 1


def test_pickle_is_compact_and_still_exact():
    rng = np.random.default_rng(1)
    db = rng.integers(0, 2**64, 50_000, dtype=np.uint64)
    index = HammingIndex(db)
    index.search(db[:10], 8)  # builds tables
    blob = pickle.dumps(index)
    assert len(blob) < db.nbytes + 10_000  # tables are not pickled
    again = pickle.loads(blob)
    for a, b in zip(again.search(db[:50], 8), brute_force(db[:50], db, 8)):
        np.testing.assert_array_equal(a, b)


def test_empty_inputs():
    index = HammingIndex(np.zeros(0, np.uint64))
    assert all(len(x) == 0 for x in index.search(np.array([1], np.uint64), 4))
    index = HammingIndex(np.array([5], np.uint64))
    assert all(len(x) == 0 for x in index.search(np.zeros(0, np.uint64), 4))
