"""Curation at scale: wall time, records/s/core and peak memory at 64k, 256k and 1M pairs.

    .venv/bin/python bench/bench_scale.py [--sizes 64000,256000,1000000] [--presets align,lit-relaxed]
        [--workers 2] [--workers-scaling 256000] [--real]

Synthetic raw shards shaped like img2dataset's output (1,000 samples a shard, 9-digit keys,
``KEY.jpg`` real 64-px JPEG bytes, ``KEY.txt``, ``KEY.json`` with url, original size and
sha256), deterministic from a seed and cached under ``bench/results/scale-data/``:

* captions: Zipf-distributed words from a 30,000-word vocabulary (so rare tokens exist), 2-14
  words; 8 % are boilerplate from a list of 40 ("click to enlarge", …, shared by far more than
  10 images, so ``text_too_common`` fires);
* images: drawn from a pool of 5,000 smooth random pictures; 5 % are exact copies of a pool
  picture (same bytes, other captions), the rest distinct bytes (a JPEG comment with the key:
  a new sha256, the same decode cost); 10 % have an original shorter side of
  150 px and 5 % an aspect ratio of 4 (``too_small``, ``aspect_ratio``);
* 0.2 % of samples repeat an earlier key (``duplicate_key``).

For each size and preset, ``litflow curate`` runs as a user runs it (a subprocess), and a
sampler reads the resident memory of the whole process tree every 0.2 s (the litflow process,
the Beam runner, its worker processes). Printed: wall time, records/s/core (inputs / (wall ×
workers)), peak RSS of the tree and of its largest process, and the growth in KB per pair
between consecutive sizes. The decode + pHash *floor* is measured in the same run on the same
images, one process: Pillow's full decode + imagehash.phash (the reference pHash, as
``bench/bench_curate.py`` measures it), and the project's own path (reduced JPEG decode +
batched DCT, what curation actually runs). The ratio is stage / floor per core.

``--workers-scaling N`` also curates size N with 1 worker and prints the 2-worker speed-up;
``--real`` runs ``bench/bench_curate.py`` on the real demo data and prints its ratio. Figures go
to ``bench/results/scale.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

GENERATOR_VERSION = 2
SHARD = 1000
BOILERPLATE = [f"{a} {b}" for a in ("click to", "image of", "photo by", "view", "download", "see the", "buy now",
                                     "free shipping")
               for b in ("enlarge", "the product", "our shop", "full size", "more")]


def _pool(rng: np.random.Generator, n: int) -> list[bytes]:
    """Distinct smooth pictures (8x8 noise upscaled) as 64-px JPEGs: cheap, real bytes."""
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(small).resize((64, 64), Image.BILINEAR).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def _distinct(image: bytes, key: int) -> bytes:
    """The same picture as other bytes: a JPEG comment naming the key after the start marker
    (a new sha256, the same decode cost; re-encoding every image would make 1M take hours)."""
    payload = f"litflow bench {key}".encode()
    return image[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + image[2:]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tar.addfile(info, io.BytesIO(data))


def generate(n: int, seed: int = 0) -> Path:
    """``n`` synthetic pairs as raw shards (cached). Streams: one shard in memory at a time."""
    folder = ROOT / "bench" / "results" / "scale-data" / f"v{GENERATOR_VERSION}-n{n}-seed{seed}"
    done = folder / "DONE"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(30_000)]
    weights = 1 / np.arange(1, len(vocabulary) + 1) ** 1.1
    weights /= weights.sum()
    pool = _pool(rng, 5000)
    key = 0
    for shard in range((n + SHARD - 1) // SHARD):
        size = min(SHARD, n - shard * SHARD)
        lengths = rng.integers(2, 15, size)
        words = rng.choice(len(vocabulary), int(lengths.sum()), p=weights)
        with tarfile.open(folder / f"{shard:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            start = 0
            for i in range(size):
                caption = " ".join(vocabulary[w] for w in words[start:start + lengths[i]])
                start += lengths[i]
                if pick.random() < 0.08:
                    caption = pick.choice(BOILERPLATE)
                image = pick.choice(pool) if pick.random() < 0.05 else _distinct(pick.choice(pool), key)
                width, height = 640, 480
                roll = pick.random()
                if roll < 0.10:
                    width, height = 150, 200
                elif roll < 0.15:
                    width, height = 800, 200
                this = f"{key - 7:09d}" if key > 10 and pick.random() < 0.002 else f"{key:09d}"
                meta = {"url": f"https://example.org/{key}.jpg", "original_width": width, "original_height": height,
                        "sha256": hashlib.sha256(image).hexdigest(), "key": this}
                _add(tar, f"{this}.jpg", image)
                _add(tar, f"{this}.txt", caption.encode())
                _add(tar, f"{this}.json", json.dumps(meta).encode())
                key += 1
    done.write_text(json.dumps({"pairs": n, "seed": seed}))
    return folder


def _tree_rss(root: int) -> tuple[int, int]:
    """(sum, largest) resident bytes of ``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, largest, todo = 0, 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        largest = max(largest, rss.get(pid, 0))
        todo.extend(children.get(pid, []))
    return total, largest


def run_measured(command: list[str]) -> dict:
    """Run ``command``; its wall time and the peak RSS of its process tree (sampled every 0.2 s)."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"tree": 0, "largest": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            total, largest = _tree_rss(proc.pid)
            peak["tree"], peak["largest"] = max(peak["tree"], total), max(peak["largest"], largest)
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.communicate()[0]
    stop.set()
    sampler.join()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{output[-3000:]}")
    return {"wall_s": wall, "peak_tree_bytes": peak["tree"], "peak_process_bytes": peak["largest"]}


def floor(raw_dir: Path, limit: int = 3000) -> dict:
    """Decode + pHash records/s in one process on the first ``limit`` images of ``raw_dir``."""
    import imagehash

    from curation.decode import decode_image
    from curation.shards import list_shards, read_shard
    from dedup.phash import DEFAULT_SETTINGS, hash_image_bytes, phash64

    images = []
    for shard in list_shards(raw_dir):
        images += [s["jpg"] for s in read_shard(shard)]
        if len(images) >= limit:
            break
    images = images[:limit]
    started = time.perf_counter()
    for data in images:
        imagehash.phash(Image.open(io.BytesIO(data)).convert("RGB"))
    reference = len(images) / (time.perf_counter() - started)
    started = time.perf_counter()
    for data in images:
        decoded = decode_image(data, 89_478_485, draft=DEFAULT_SETTINGS.jpeg_draft)
        phash64(decoded.image) if decoded.reduced else hash_image_bytes(data, DEFAULT_SETTINGS)
    ours = len(images) / (time.perf_counter() - started)
    return {"reference_decode_imagehash": reference, "project_decode_phash": ours}


def curate(raw: Path, preset: str, workers: int) -> dict:
    out = ROOT / "bench" / "results" / "scale-out" / f"{raw.name}-{preset}-w{workers}"
    measured = run_measured([str(ROOT / ".venv" / "bin" / "litflow"), "curate", str(raw), str(out),
                             "--preset", preset, "--workers", str(workers)])
    manifest = json.loads((out / "corpus.json").read_text())
    inputs = manifest["inputs"]
    return {**measured, "inputs": inputs, "kept": manifest["kept"], "workers": workers,
            "records_per_s_per_core": inputs / (measured["wall_s"] * workers)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="64000,256000,1000000")
    parser.add_argument("--presets", default="align,lit-relaxed")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workers-scaling", type=int, default=None, metavar="N")
    parser.add_argument("--real", action="store_true", help="also run bench/bench_curate.py on the real demo data")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale.json"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    presets = args.presets.split(",")

    runs, floors = [], {}
    for n in sizes:
        raw = generate(n)
        floors[n] = floor(raw)
        for preset in presets:
            result = curate(raw, preset, args.workers)
            result.update(pairs=n, preset=preset,
                          ratio_reference_floor=result["records_per_s_per_core"] / floors[n]["reference_decode_imagehash"],
                          ratio_project_floor=result["records_per_s_per_core"] / floors[n]["project_decode_phash"])
            runs.append(result)
            print(f"{n:>9,} {preset:<12} wall {result['wall_s']:7.1f} s  {result['records_per_s_per_core']:7.0f} rec/s/core  "
                  f"peak tree {result['peak_tree_bytes'] / 1e9:5.2f} GB (largest process "
                  f"{result['peak_process_bytes'] / 1e9:4.2f} GB)  / floor {result['ratio_reference_floor']:.2f} "
                  f"(reference) {result['ratio_project_floor']:.2f} (project)", flush=True)
    scaling = None
    if args.workers_scaling:
        raw = generate(args.workers_scaling)
        scaling = {}
        for preset in presets:
            one, two = curate(raw, preset, 1), curate(raw, preset, 2)
            scaling[preset] = {"one_worker_wall_s": one["wall_s"], "two_workers_wall_s": two["wall_s"],
                               "speedup": one["wall_s"] / two["wall_s"]}
            print(f"1 -> 2 workers at {args.workers_scaling:,} {preset}: {one['wall_s']:.1f} s -> {two['wall_s']:.1f} s, "
                  f"speed-up {one['wall_s'] / two['wall_s']:.2f}x", flush=True)
    real = None
    if args.real:
        subprocess.run([sys.executable, str(ROOT / "bench" / "bench_curate.py")], check=True, cwd=ROOT)
        real = json.loads((ROOT / "bench" / "results" / "curate.json").read_text())
        print(f"real demo data ({real['records']} samples): whole stage / floor {real['ratio_to_floor']:.2f}")

    print(f"\n{'pairs':>9} {'preset':<12}{'wall s':>8}{'rec/s/core':>11}{'tree GB':>9}{'max proc GB':>12}"
          f"{'KB/pair growth':>16}{'/ref floor':>11}{'/our floor':>11}")
    for preset in presets:
        previous = None
        for r in (r for r in runs if r["preset"] == preset):
            growth = ""
            if previous is not None:
                r["kb_per_pair_growth"] = (r["peak_tree_bytes"] - previous["peak_tree_bytes"]) / (r["pairs"] - previous["pairs"]) / 1e3
                growth = f"{r['kb_per_pair_growth']:.2f}"
            print(f"{r['pairs']:>9,} {preset:<12}{r['wall_s']:>8.1f}{r['records_per_s_per_core']:>11.0f}"
                  f"{r['peak_tree_bytes'] / 1e9:>9.2f}{r['peak_process_bytes'] / 1e9:>12.2f}{growth:>16}"
                  f"{r['ratio_reference_floor']:>11.2f}{r['ratio_project_floor']:>11.2f}")
            previous = r
    for n, f in floors.items():
        print(f"floor at {n:,}: decode + imagehash.phash {f['reference_decode_imagehash']:.0f} rec/s/core, "
              f"project decode + pHash {f['project_decode_phash']:.0f} rec/s/core")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"runs": runs, "floors": {str(k): v for k, v in floors.items()},
                                          "workers_scaling": scaling, "real": real, "cores": os.cpu_count()},
                                         indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
