"""Training benchmark: LiT's ``Lu`` from the embedding cache vs ``Lu`` running the locked
image tower on every batch (what open_clip's ``--lock-image`` does), side by side.

    .venv/bin/python bench/bench_train.py [--batch-size 64] [--steps 6] [--device cpu]
    bash bench/bench_train_cuda.sh          # the same on a CUDA GPU: bf16, larger batch

Same towers (default efficientnet-lite0 locked, MiniLM text), same batch, same trainer
(:func:`training.train.train`, real curated shards of real openclipart images at 256 px):
only the image source differs. Each measurement runs in its own subprocess; peak memory (CPU: peak RSS, reset
after the warm-up steps; CUDA: peak allocated) covers the timed steps only. pairs/s is the median over the
timed steps (the first two steps are warm-up), data loading and JPEG decoding included;
the best step is printed too, since a shared machine's load shows up as slow steps.

Largest batch in 8 GiB: peak memory is measured at two batch sizes; memory is modelled as
fixed + per-pair x B + 24 bytes x B^2 (the B x B logits and their softmax/gradients in
float32, both directions) and solved for 8 GiB. It is an extrapolation from two measured
points, printed as such. The one-off cost of filling the cache is printed too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

GIB = 1024 ** 3
QUADRATIC_BYTES = 24  # per element of the B x B logits: logits, softmax and gradient, two directions


def _vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(args) -> dict:
    """One training run in this process; returns pairs/s and peak memory."""
    import torch

    from training.text_towers import TextSpec
    from training.train import TrainConfig, train

    config = TrainConfig(shards=[args.shards], out=args.out, image_tower=args.image_tower,  # no mode: LU, or Lu for a scratch text tower
                         image_source=args.source, cache=args.cache if args.source == "cache" else None,
                         text=TextSpec(name=args.text_tower, width=args.text_width, depth=args.text_depth,
                                       heads=args.text_heads, vocab_size=args.vocab_size),
                         batch_size=args.batch_size, steps=args.steps + 2,
                         warmup=1, shuffle_buffer=args.batch_size, checkpoint_every=10 ** 9,
                         precision=args.precision, device=args.device, workers=args.workers)
    cuda = args.device.startswith("cuda")
    peak = {}

    def on_step(step, _row):
        # peak memory of the steady-state steps only: reset after warm-up, read before the final checkpoint
        if step == 2:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            else:
                Path("/proc/self/clear_refs").write_text("5")  # resets the kernel's peak RSS (VmHWM)
        if step == config.steps:
            peak["bytes"] = torch.cuda.max_memory_allocated() if cuda else _vm_hwm()

    train(config, on_step=on_step)
    rows = [json.loads(line) for line in Path(args.out, "metrics.jsonl").read_text().splitlines()]
    timed = [r["pairs_per_s"] for r in rows[2:]]
    rate, best = statistics.median(timed), max(timed)
    peak = peak["bytes"]
    return {"source": args.source, "batch": args.batch_size, "pairs_per_s": rate, "best_pairs_per_s": best, "peak_bytes": peak,
            "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"]}


def run_one(common: list[str], source: str, batch: int, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--measure", source, "--batch-size", str(batch), "--out", str(out), *common]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"measurement failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def max_batch(small: dict, large: dict, budget: int = 8 * GIB) -> int:
    """Solve fixed + per_pair*B + q*B^2 = budget from two measured (B, peak) points."""
    b1, b2 = small["batch"], large["batch"]
    m1 = small["peak_bytes"] - QUADRATIC_BYTES * b1 ** 2
    m2 = large["peak_bytes"] - QUADRATIC_BYTES * b2 ** 2
    per_pair = max((m2 - m1) / (b2 - b1), 1.0)
    fixed = m1 - per_pair * b1
    q = QUADRATIC_BYTES
    return int((-per_pair + math.sqrt(per_pair ** 2 + 4 * q * (budget - fixed))) / (2 * q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--images", type=int, default=256, help="real openclipart images in the shards")
    parser.add_argument("--image-tower", default="efficientnet-lite0")
    parser.add_argument("--text-tower", default="minilm")
    parser.add_argument("--text-width", type=int, default=256, help="scratch text tower width")
    parser.add_argument("--text-depth", type=int, default=4, help="scratch text tower layers")
    parser.add_argument("--text-heads", type=int, default=4, help="scratch text tower heads")
    parser.add_argument("--vocab-size", type=int, default=8000, help="scratch tokenizer vocabulary")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"))
    parser.add_argument("--workers", type=int, default=0, help="data loader workers")
    parser.add_argument("--work", help="folder for shards, cache and runs (default: a temporary one)")
    parser.add_argument("--measure", choices=("cache", "images"), help=argparse.SUPPRESS)
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        args.source = args.measure
        print(json.dumps(measure(args)))
        return

    import torch

    from curation.demo_data import fetch_all
    from tests.demo_shards import write_demo_shards
    from training.embed_cache import embed_shards
    from training.image_towers import build_image_tower

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_train_"))
    data = fetch_all()
    per_shard = 64
    shards = write_demo_shards(data.cache, data.catalogue, work / "shards", max(1, args.images // per_shard),
                               per_shard, source="openclipart")
    tower = build_image_tower(args.image_tower)
    started = time.perf_counter()
    device = torch.device(args.device)
    embed_shards(tower, shards, work / "cache", batch_size=64, device=device)
    embed_s = time.perf_counter() - started
    images = len(shards) * per_shard
    del tower

    common = ["--steps", str(args.steps), "--image-tower", args.image_tower, "--text-name", args.text_tower,
              "--text-width", str(args.text_width), "--text-depth", str(args.text_depth),
              "--text-heads", str(args.text_heads), "--text-vocab-size", str(args.vocab_size),
              "--device", args.device, "--precision", args.precision, "--workers", str(args.workers),
              "--shards", str(work / "shards"), "--cache", str(work / "cache")]
    half = max(2, args.batch_size // 2)
    results = {}
    for source in ("cache", "images"):
        results[source] = [run_one(common, source, b, work / f"run-{source}-{b}") for b in (half, args.batch_size)]

    cache, online = results["cache"][1], results["images"][1]
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {os.cpu_count()} cores"
    memory = "peak allocated (CUDA)" if args.device.startswith("cuda") else "peak RSS"
    print(f"\nLiT {'Lu' if args.text_tower == 'scratch' else 'LU'} training, {args.image_tower} (locked) + {args.text_tower} text, batch {args.batch_size}, "
          f"{args.precision}, {device_name}, {images} real openclipart images")
    print(f"one-off: embedding cache filled at {images / embed_s:.1f} images/s ({embed_s:.1f} s)")
    print(f"{'':34}{'from cache':>14}{'tower every batch':>20}")
    print(f"{'pairs/s (median of steps)':34}{cache['pairs_per_s']:>14.1f}{online['pairs_per_s']:>20.1f}")
    print(f"{'pairs/s (best step)':34}{cache['best_pairs_per_s']:>14.1f}{online['best_pairs_per_s']:>20.1f}")
    print(f"{memory + ' (GiB)':34}{cache['peak_bytes'] / GIB:>14.2f}{online['peak_bytes'] / GIB:>20.2f}")
    print(f"{'largest batch in 8 GiB (extrap.)':34}{max_batch(*results['cache']):>14d}{max_batch(*results['images']):>20d}")
    print(f"speed-up from the cache: {cache['pairs_per_s'] / online['pairs_per_s']:.1f}x median, "
          f"{cache['best_pairs_per_s'] / online['best_pairs_per_s']:.1f}x best step")
    for source, runs in results.items():
        for r in runs:
            print(f"  measured {source:6} batch {r['batch']:5}: {r['pairs_per_s']:9.1f} pairs/s, "
                  f"{r['peak_bytes'] / GIB:.2f} GiB, loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}")


if __name__ == "__main__":
    main()
