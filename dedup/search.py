"""Exact Hamming-radius search over 64-bit hashes: multi-index hashing (MIH) in numpy.

Why hand-written: faiss's ``IndexBinaryMultiHash`` is exact too but answers one query at a
time through Python-visible overhead per probe; measured here (bench/bench_dedup_search.py) it
is several times slower than this at radius 4 and 8. Brute force (popcount of XOR against all
N hashes) is exact and simple but costs N operations per query (~1.5 M).

How (Norouzi, Punjani & Fleet, "Fast search in Hamming space with multi-index hashing", 2012):
the 64 bits are cut into ``m`` contiguous substrings. If two hashes differ in at most
``r = m*s + a`` bits (0 <= a < m), then one of the first ``a+1`` substrings differs in at most
``s`` bits, or one of the others in at most ``s-1`` (pigeonhole). So a query only has to look
up, in each substring's table, the buckets within that small radius, and check the full
distance of the few hashes found there. Each table is a counting sort of the database by
substring value: ``offsets`` (2^bits + 1 int32) and the database ids in bucket order, so a
bucket lookup is two array reads, no hashing and no search. Queries run in batches: every
probe of every query of a batch is one vectorised numpy gather, which is what makes it fast.

``m`` is chosen per radius from a cost model fed with the real bucket sizes (expected
candidates per probe = sum(count^2)/N, which accounts for clustered real pHashes).

Bits are interleaved before cutting (substring i holds bits i, i+m, i+2m, ...): Hamming
distance does not change under a fixed bit permutation, but pHash bits are row-major DCT
signs whose first rows are strongly correlated, so contiguous substrings made very uneven
buckets on real pHashes (largest bucket 1,784 and sum(c^2)/N = 26 for the top 22 bits of
1.2 M real hashes, vs 89 and 2.7 interleaved; measured 4x more lookups/s at radius 4).
"""

from __future__ import annotations

from functools import lru_cache
from itertools import combinations

import numpy as np

MAX_TABLE_BITS = 22  # offsets table of 2^22 int32 = 16 MiB per substring
_PROBE_COST = 1.0
_CANDIDATE_COST = 2.0


def brute_force(queries: np.ndarray, database: np.ndarray, radius: int,
                chunk: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference: (query index, database index, distance) of every pair within ``radius``."""
    queries = np.asarray(queries, np.uint64)
    database = np.asarray(database, np.uint64)
    out_q, out_d, out_dist = [], [], []
    for start in range(0, len(queries), chunk):
        block = queries[start:start + chunk]
        dist = np.bitwise_count(block[:, None] ^ database[None, :])
        q, d = np.nonzero(dist <= radius)
        out_q.append(q + start)
        out_d.append(d)
        out_dist.append(dist[q, d])
    if not out_q:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8)
    return (np.concatenate(out_q).astype(np.int64), np.concatenate(out_d).astype(np.int64),
            np.concatenate(out_dist).astype(np.uint8))


@lru_cache(maxsize=None)
def _flip_masks(bits: int, radius: int) -> np.ndarray:
    """Every ``bits``-bit mask with at most ``radius`` ones (the probes of one table)."""
    masks = [0]
    for ones in range(1, min(radius, bits) + 1):
        for positions in combinations(range(bits), ones):
            masks.append(sum(1 << p for p in positions))
    return np.asarray(masks, np.int32)


def _layout(m: int) -> list[tuple[int, int]]:
    """(shift, bits) of m contiguous substrings covering 64 bits, widest first."""
    widths = [64 // m + (1 if i < 64 % m else 0) for i in range(m)]
    out, shift = [], 64
    for w in widths:
        shift -= w
        out.append((shift, w))
    return out


def _interleave(m: int) -> np.ndarray:
    """Bit permutation (MSB-first positions) putting bits i, i+m, i+2m, ... side by side."""
    return np.concatenate([np.arange(i, 64, m) for i in range(m)])


def permute_bits(hashes: np.ndarray, permutation: np.ndarray) -> np.ndarray:
    """Apply a bit permutation to uint64 hashes (bit k of the result = bit permutation[k])."""
    bits = np.unpackbits(np.asarray(hashes, np.uint64).astype(">u8").view(np.uint8).reshape(-1, 8), axis=1)
    packed = np.ascontiguousarray(np.packbits(bits[:, permutation], axis=1))
    return packed.view(">u8").reshape(-1).astype(np.uint64)


def _radii(m: int, radius: int) -> list[int]:
    """Per-substring search radius from the pigeonhole rule (-1 = table not needed)."""
    s, a = divmod(radius, m)
    return [s if i <= a else s - 1 for i in range(m)]


class _Table:
    __slots__ = ("shift", "bits", "offsets", "count8", "ids", "sorted_hashes", "collision")

    def __init__(self, hashes: np.ndarray, shift: int, bits: int):
        self.shift, self.bits = shift, bits
        values = ((hashes >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(np.int32)
        counts = np.bincount(values, minlength=1 << bits)
        self.offsets = np.zeros((1 << bits) + 1, np.int32)
        np.cumsum(counts, out=self.offsets[1:])
        # bucket sizes in 1 byte (saturating at 255): most probes hit empty buckets, and this
        # 4 MiB array is read first so the 16 MiB offsets are touched only for non-empty ones
        self.count8 = np.minimum(counts, 255).astype(np.uint8)
        self.ids = np.argsort(values, kind="stable").astype(np.int32)
        # the hashes in bucket order: candidates are checked without going through ids
        self.sorted_hashes = hashes[self.ids]
        # expected bucket size met by a probe drawn like the data: sum(c^2)/N
        n = max(len(hashes), 1)
        self.collision = float((counts.astype(np.float64) ** 2).sum() / n)

    def substrings(self, queries: np.ndarray) -> np.ndarray:
        return ((queries >> np.uint64(self.shift)) & np.uint64((1 << self.bits) - 1)).astype(np.int32)


class HammingIndex:
    """Exact radius search over a fixed uint64 array. Tables are built lazily per layout.

    ``search(queries, radius)`` returns every (query index, database index, distance) with
    distance <= radius, sorted by query then database index: the same set as
    :func:`brute_force`, which the tests check.
    """

    def __init__(self, hashes: np.ndarray, max_table_bits: int = MAX_TABLE_BITS):
        self.hashes = np.ascontiguousarray(np.asarray(hashes, np.uint64))
        self.max_table_bits = max_table_bits
        self._tables: dict[int, list[_Table]] = {}
        self._permutations: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.hashes)

    def __getstate__(self):  # tables are rebuilt where used: keeps a pickled index compact
        return {"hashes": self.hashes, "max_table_bits": self.max_table_bits}

    def __setstate__(self, state):
        self.__init__(state["hashes"], state["max_table_bits"])

    def tables(self, m: int) -> list[_Table]:
        if m not in self._tables:
            if _layout(m)[0][1] > 24:
                raise ValueError(f"{m} substrings of 64 bits need {_layout(m)[0][1]}-bit tables; at most 24")
            self._permutations[m] = _interleave(m)
            permuted = permute_bits(self.hashes, self._permutations[m])
            self._tables[m] = [_Table(permuted, shift, bits) for shift, bits in _layout(m)]
        return self._tables[m]

    def _candidate_ms(self) -> list[int]:
        return [m for m in range(2, 17) if _layout(m)[0][1] <= self.max_table_bits]

    def estimated_cost(self, m: int, radius: int) -> float:
        """Work per query for m substrings at this radius (probes + expected candidates)."""
        cost = 0.0
        for (_, bits), r in zip(_layout(m), _radii(m, radius)):
            if r < 0:
                continue
            probes = len(_flip_masks(bits, r))
            # uniform-data estimate until the table exists; then its measured collision rate
            bucket = (self._tables[m][0].collision if m in self._tables
                      else len(self.hashes) / (1 << bits))
            cost += probes * _PROBE_COST + probes * bucket * _CANDIDATE_COST
        return cost

    def choose_m(self, radius: int) -> int:
        return min(self._candidate_ms(), key=lambda m: (self.estimated_cost(m, radius), m))

    def search(self, queries: np.ndarray, radius: int, m: int | None = None,
               batch_probes: int = 1 << 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(np.asarray(queries, np.uint64).reshape(-1))
        if radius < 0:
            raise ValueError("radius must be >= 0")
        if len(self.hashes) == 0 or len(queries) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8)
        if radius >= 64:
            return brute_force(queries, self.hashes, radius)
        m = m or self.choose_m(radius)
        tables = self.tables(m)
        radii = _radii(m, radius)
        probes_per_query = sum(len(_flip_masks(t.bits, r)) for t, r in zip(tables, radii) if r >= 0)
        step = max(1, batch_probes // probes_per_query)
        perm = self._permutations[m]
        parts = [self._search_batch(queries[i:i + step], permute_bits(queries[i:i + step], perm), i, radius, tables, radii)
                 for i in range(0, len(queries), step)]
        q = np.concatenate([p[0] for p in parts])
        d = np.concatenate([p[1] for p in parts])
        dist = np.concatenate([p[2] for p in parts])
        return q, d, dist

    def _search_batch(self, queries, permuted, first, radius, tables, radii):
        """``permuted``: the queries with the tables' bit permutation (tables hold permuted hashes)."""
        found_q, found_d = [], []
        for table, r in zip(tables, radii):
            if r < 0:
                continue
            masks = _flip_masks(table.bits, r)
            probes = (table.substrings(permuted)[:, None] ^ masks[None, :]).reshape(-1)
            sizes = table.count8[probes]
            hit = np.flatnonzero(sizes)
            if len(hit) == 0:
                continue
            bucket = probes[hit]
            starts = table.offsets[bucket]
            counts = sizes[hit].astype(np.int64)
            full = np.flatnonzero(counts == 255)  # saturated: read the true size
            counts[full] = table.offsets[bucket[full] + 1] - starts[full]
            total = int(counts.sum())
            # positions start..start+count-1 of every non-empty bucket, flattened
            positions = np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(total)
            qidx = np.repeat(hit // len(masks), counts)
            keep = np.flatnonzero(np.bitwise_count(table.sorted_hashes[positions] ^ permuted[qidx]) <= radius)
            found_q.append(qidx[keep])
            found_d.append(table.ids[positions[keep]])
        if not found_q:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8)
        # a pair can be found through several tables: keep it once (sorted by query, id)
        pair = np.unique(np.concatenate(found_q).astype(np.int64) * len(self.hashes)
                         + np.concatenate(found_d).astype(np.int64))
        q, d = np.divmod(pair, len(self.hashes))
        dist = np.bitwise_count(self.hashes[d] ^ queries[q]).astype(np.uint8)
        return q + first, d, dist
