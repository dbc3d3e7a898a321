"""Eval-index search speed: lookups/s per core against 1.5 M hashes, exact, side by side.

    .venv/bin/python bench/bench_dedup_search.py [--n 1500000] [--queries 20000]

Methods: our numpy multi-index hashing (dedup.search.HammingIndex), faiss
IndexBinaryMultiHash (range search, nflip set so it is exact at the radius), faiss
IndexBinaryFlat (C++ brute force) and numpy brute force. All single-threaded (faiss OMP threads
= 1, numpy does not thread these ops). Recall is against brute force on a query subset.

Two databases: uniform random 64-bit hashes, and *real* pHashes — pHash values of real image
content (demo openclipart / emoji / MNIST images, 32x32 crops at random offsets and scales, so
that 1.5 M distinct ones exist; they cluster the way pHashes do, which makes buckets uneven).
Queries are database hashes with 0..radius bits flipped (half) and fresh ones (half).
Results go to bench/results/dedup_search.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dedup.phash import hashes_from_pixels  # noqa: E402
from dedup.search import HammingIndex, brute_force  # noqa: E402

RADII = (4, 8, 12)


def real_phashes(n: int, seed: int = 0) -> np.ndarray:
    """n pHashes of real image content (cached under .cache/bench/)."""
    from PIL import Image

    from curation.demo_data import fetch_all

    demo = fetch_all()
    cache = demo.cache / "bench" / f"real_phashes_{n}_{seed}.npy"
    if cache.exists():
        return np.load(cache)
    rng = np.random.default_rng(seed)
    paths = [p for p in sorted((demo.cache / "openclipart/png").rglob("*.png")) if p.stat().st_size < 2_000_000]
    paths += sorted((demo.cache / "emoji/img/google/64").glob("*.png"))
    paths += sorted((demo.cache / "mnist-png").rglob("*.png"))[::5]
    per_image = -(-n // len(paths))
    out, pixels = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            try:
                image = Image.open(path)
                image.draft("RGB", (160, 160))
                image = image.convert("L")
                image.thumbnail((160, 160))
            except Exception:  # noqa: BLE001 - skip the real decompression bombs
                continue
            w, h = image.size
            for _ in range(per_image):
                side = rng.uniform(0.5, 1.0)
                cw, ch = max(1, min(w, int(w * side))), max(1, min(h, int(h * side)))
                x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
                pixels.append(np.asarray(image.resize((32, 32), Image.Resampling.BILINEAR, box=(x, y, x + cw, y + ch))))
            if len(pixels) >= 65536:
                out.append(hashes_from_pixels(np.stack(pixels))[0])
                pixels = []
    if pixels:
        out.append(hashes_from_pixels(np.stack(pixels))[0])
    hashes = np.unique(np.concatenate(out))
    rng.shuffle(hashes)
    hashes = hashes[:n]
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, hashes)
    return hashes


def make_queries(db: np.ndarray, count: int, radius: int, rng) -> np.ndarray:
    near = db[rng.integers(0, len(db), count // 2)].copy()
    flips = rng.integers(0, radius + 1, len(near))
    for i, k in enumerate(flips):
        for b in rng.choice(64, size=k, replace=False):
            near[i] ^= np.uint64(1) << np.uint64(b)
    fresh = db[rng.integers(0, len(db), count - len(near))] ^ rng.integers(0, 2**64, count - len(near), dtype=np.uint64)
    return np.concatenate([near, fresh])


def pairs(result) -> set[tuple[int, int]]:
    return set(zip(result[0].tolist(), result[1].tolist()))


def timed(fn, count):
    start = time.perf_counter()
    result = fn()
    return result, count / (time.perf_counter() - start)


def faiss_methods(db: np.ndarray):
    try:
        import faiss
    except ImportError:
        return None
    faiss.omp_set_num_threads(1)
    codes = db.view(np.uint8).reshape(-1, 8)
    flat = faiss.IndexBinaryFlat(64)
    flat.add(codes)
    multi = faiss.IndexBinaryMultiHash(64, 3, 21)
    multi.add(codes)

    def run(index, queries, radius, nflip=None):
        if nflip is not None:
            index.nflip = nflip
        lims, _, labels = index.range_search(queries.view(np.uint8).reshape(-1, 8), radius + 1)  # strict <
        q = np.repeat(np.arange(len(queries)), np.diff(lims).astype(np.int64))
        return q, labels.astype(np.int64)

    return flat, multi, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_500_000)
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--check", type=int, default=200, help="queries checked against brute force")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    databases = {"uniform": rng.integers(0, 2**64, args.n, dtype=np.uint64)}
    t = time.perf_counter()
    databases["real pHash"] = real_phashes(args.n)
    print(f"real pHashes: {len(databases['real pHash']):,} in {time.perf_counter() - t:.0f} s", flush=True)
    results = []
    print(f"{'data':11s} {'r':>3s} {'method':28s} {'lookups/s':>11s} {'recall':>7s} {'hits/query':>10s}")
    for name, db in databases.items():
        index = HammingIndex(db)
        faiss_parts = faiss_methods(db)
        for radius in RADII:
            queries = make_queries(db, args.queries, radius, rng)
            check = queries[: args.check // 2].tolist() + queries[-args.check // 2:].tolist()
            check = np.asarray(check, np.uint64)
            truth, brute_rate = timed(lambda: brute_force(check, db, radius, chunk=4), len(check))
            truth_pairs = pairs(truth)
            m = index.choose_m(radius)
            index.tables(m)  # built once, not timed (like the index build)
            ours, rate = timed(lambda: index.search(queries, radius), len(queries))
            ours_check = index.search(check, radius)
            rows = [("numpy MIH (ours, m=%d)" % m, rate, pairs(ours_check), len(ours[0]) / len(queries)),
                    ("numpy brute force", brute_rate, truth_pairs, len(truth[0]) / len(check))]
            if faiss_parts:
                flat, multi, run = faiss_parts
                nflip = -(-(radius + 1) // 3) - 1  # exact when 3 * (nflip + 1) > radius
                few = queries[:2000] if radius < 12 else queries[:200]
                _, mrate = timed(lambda: run(multi, few, radius, nflip), len(few))
                rows.append((f"faiss MultiHash (nflip={nflip})", mrate, pairs(run(multi, check, radius, nflip)), float("nan")))
                _, frate = timed(lambda: run(flat, queries[:500], radius), 500)
                rows.append(("faiss flat (brute force)", frate, pairs(run(flat, check, radius)), float("nan")))
            for method, speed, found, hits in rows:
                recall = len(found & truth_pairs) / max(len(truth_pairs), 1)
                extra = len(found - truth_pairs)
                print(f"{name:11s} {radius:3d} {method:28s} {speed:11,.0f} {recall:7.4f} {hits:10.2f}"
                      + (f"  ({extra} false)" if extra else ""), flush=True)
                results.append({"data": name, "radius": radius, "method": method, "lookups_per_s": speed,
                                "recall": recall, "false_hits": extra, "n": len(db)})
    out = Path(__file__).resolve().parent / "results" / "dedup_search.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
