"""Memory of training the image tower (``UU``), with and without micro-batches, side by side.

    .venv/bin/python bench/bench_train_memory.py [--steps 3] [--images 512]

``UU`` with efficientnet-lite0 (pretrained, trained) and MiniLM (pretrained, trained), fp32 on the CPU, on real curated
openclipart images through the real trainer (:func:`training.train.train`). Each configuration
runs in its own subprocess; its peak RSS is reset after the first step (model loading and the
first allocation) and read at the last, so it covers steady-state steps. Whole-batch runs are
measured at two batch sizes and extrapolated linearly to the larger ones (a batch of 256 was
killed at 22 GB on this 24 GB machine, so it is not run). ``micro_batch`` runs are measured at
every batch size: their activation memory is that of one slice. pairs/s is the median over the
steps after the first (the micro-batch's extra forward pass is its cost).

Memory: one training run per subprocess; this process holds only the results.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

GIB = 1024 ** 3
# (global batch, micro batch or None): whole batches at two sizes for the line, slices at all sizes
PLAN = [(32, None), (64, None), (64, 16), (128, 32), (256, 32), (256, 64)]


def _vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(args) -> dict:
    from training.train import TrainConfig, train

    config = TrainConfig(shards=[args.shards], out=args.out, mode=args.mode, image_tower="efficientnet-lite0",
                         batch_size=args.batch_size, micro_batch=args.micro_batch, steps=args.steps, warmup=1,
                         shuffle_buffer=args.batch_size, checkpoint_every=10 ** 9, checkpoint_minutes=None,
                         precision="fp32", device="cpu")
    peak = {}

    def on_step(step, _row):
        if step == 1:
            Path("/proc/self/clear_refs").write_text("5")  # resets the kernel's peak RSS (VmHWM)
        if step == config.steps:
            peak["bytes"] = _vm_hwm()  # before the final checkpoint is written

    train(config, on_step=on_step)
    rows = [json.loads(line) for line in Path(args.out, "metrics.jsonl").read_text().splitlines()]
    return {"batch": args.batch_size, "micro_batch": args.micro_batch, "peak_bytes": peak["bytes"],
            "pairs_per_s": statistics.median(r["pairs_per_s"] for r in rows[1:]),
            "loss": [round(r["loss"], 4) for r in rows]}


def run_one(common: list[str], batch: int, micro: int | None, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--measure", "--batch-size", str(batch), "--out", str(out), *common]
    if micro is not None:
        cmd += ["--micro-batch", str(micro)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"measurement failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="steps per configuration (the first is warm-up)")
    parser.add_argument("--images", type=int, default=512, help="real openclipart images in the shards")
    parser.add_argument("--mode", default="UU", choices=("UU", "Uu", "uu"))
    parser.add_argument("--work", help="folder for shards and runs (default: a temporary one)")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--micro-batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args)))
        return

    from curation.demo_data import fetch_all
    from tests.demo_shards import write_demo_shards

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_train_memory_"))
    data = fetch_all()
    per_shard = 64
    write_demo_shards(data.cache, data.catalogue, work / "shards", max(1, args.images // per_shard), per_shard,
                      source="openclipart")
    common = ["--steps", str(args.steps), "--mode", args.mode, "--shards", str(work / "shards")]
    results = [run_one(common, b, m, work / f"run-{b}-{m}") for b, m in PLAN]
    whole = [r for r in results if r["micro_batch"] is None]
    (b1, p1), (b2, p2) = [(r["batch"], r["peak_bytes"]) for r in whole[:2]]
    per_pair = (p2 - p1) / (b2 - b1)

    print(f"\nLiT {args.mode} training, efficientnet-lite0 (trained) + {'MiniLM' if args.mode[1] == 'U' else 'scratch text'}, fp32, CPU {os.cpu_count()} cores, "
          f"{args.steps} steps each, real openclipart images")
    print(f"whole batch: {per_pair / 2 ** 20:.1f} MiB per pair of the batch (from batches {b1} and {b2})")
    print(f"{'global batch':>12} {'micro batch':>12} {'peak RSS GiB':>13} {'whole batch GiB':>16} {'pairs/s':>9}")
    for r in results:
        line = p1 + per_pair * (r["batch"] - b1)
        extrapolated = f"{line / GIB:.2f}" + ("" if r["micro_batch"] is None else " (extrap.)")
        print(f"{r['batch']:>12} {r['micro_batch'] or '-':>12} {r['peak_bytes'] / GIB:>13.2f} {extrapolated:>16} "
              f"{r['pairs_per_s']:>9.1f}")
    same = [r for r in results if r["batch"] == 64]
    print(f"batch 64, whole vs micro 16, losses: {same[0]['loss']} vs {same[1]['loss']}")


if __name__ == "__main__":
    main()
