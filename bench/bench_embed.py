"""The locked image tower's forward pass on CPU: eager PyTorch against the frozen channels-last
trace that ``encode`` runs (:class:`training.image_towers.FrozenOnCpu`), side by side.

    .venv/bin/python bench/bench_embed.py [--tower efficientnet-lite0] [--images 512] [--batch 64] [--rounds 3]

Images: real demo images (openclipart PNGs and Noto emoji, alternating), through the tower's own
preprocessing, done once before timing. Each round times the eager module (``tower.module`` under
``torch.no_grad``) and then ``tower.encode`` on the same batches, so both see the same load on
this shared machine; the figures are the medians over rounds. The first call of ``encode``
(which traces and freezes) is made before timing and its cost printed apart.

Printed: ms per image each way and their ratio; how far apart the features are (largest absolute
difference, and the share of float16 cache values that come out identical); and whether
``encode`` gives the same bytes twice and at another batch size.

Memory: the preprocessed images (N x 3 x 224 x 224 float32: 0.6 MB each) and the tower twice.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from curation.demo_data import fetch_all  # noqa: E402
from training.image_towers import build_image_tower  # noqa: E402


def demo_images(count: int) -> list[Path]:
    demo = fetch_all()
    clipart = sorted((demo.cache / "openclipart/png").rglob("*.png"))
    emoji = sorted((demo.cache / "emoji/img/google/64").glob("*.png"))
    mixed = [p for pair in zip(clipart, emoji) for p in pair]
    if len(mixed) < count:
        raise SystemExit(f"only {len(mixed)} demo images; ask for fewer")
    return mixed[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tower", default="efficientnet-lite0")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "embed.json"))
    args = parser.parse_args()

    tower = build_image_tower(args.tower)
    if tower.module is None:
        raise SystemExit(f"{args.tower} has no torch module (an ONNX tower): nothing to compare")
    pixels = torch.from_numpy(np.stack([tower.preprocess(Image.open(p)) for p in demo_images(args.images)]))
    batches = list(torch.split(pixels, args.batch))

    with torch.no_grad():
        started = time.perf_counter()
        tower.encode(batches[0])
        first_call_s = time.perf_counter() - started

        def run(forward) -> tuple[float, torch.Tensor]:
            started = time.perf_counter()
            out = torch.cat([forward(b) for b in batches])
            return (time.perf_counter() - started) * 1000 / len(pixels), out

        eager_ms, frozen_ms = [], []
        for _ in range(args.rounds):
            ms, eager = run(tower.module)
            eager_ms.append(ms)
            ms, frozen = run(tower.encode)
            frozen_ms.append(ms)
        again = torch.cat([tower.encode(b) for b in torch.split(pixels, max(1, args.batch // 2))])

    eager16, frozen16 = eager.numpy().astype(np.float16), frozen.numpy().astype(np.float16)
    result = {
        "tower": args.tower, "images": len(pixels), "batch": args.batch, "rounds": args.rounds,
        "threads": torch.get_num_threads(), "first_call_s": first_call_s,
        "eager_ms_per_image": statistics.median(eager_ms), "frozen_ms_per_image": statistics.median(frozen_ms),
        "max_abs_difference": float((eager - frozen).abs().max()),
        "max_feature": float(eager.abs().max()),
        "float16_identical_share": float(np.mean(eager16 == frozen16)),
        "same_bytes_at_half_batch": bool(torch.equal(frozen, again)),
    }
    result["speedup"] = result["eager_ms_per_image"] / result["frozen_ms_per_image"]
    print(f"{args.tower}, {len(pixels)} demo images, batch {args.batch}, {result['threads']} threads, "
          f"median of {args.rounds} rounds side by side")
    print(f"  eager module          {result['eager_ms_per_image']:7.2f} ms/image")
    print(f"  encode (frozen, NHWC) {result['frozen_ms_per_image']:7.2f} ms/image   "
          f"-> {result['speedup']:.2f}x (first call, trace + freeze: {first_call_s:.1f} s)")
    print(f"  features: largest difference {result['max_abs_difference']:.2e} (largest feature "
          f"{result['max_feature']:.2f}); float16 cache values identical: {result['float16_identical_share']:.4f}; "
          f"same bytes at batch {max(1, args.batch // 2)}: {result['same_bytes_at_half_batch']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
