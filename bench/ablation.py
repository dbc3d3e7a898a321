"""LiT's Table 2 ablation on real demo data: Lu vs Uu vs uu with the same budget (any of LiT's
two-letter modes with ``--modes``, e.g. ``LU,UU``: the text tower follows the second letter).

    .venv/bin/python bench/ablation.py [--steps 50] [--batch-size 32] [--eval-limit 400] [--seed 0] [--work work/ablation]

Stages (each skipped when its output is complete, so a re-run resumes):

1. ingest all demo images (openclipart + emoji, served on 127.0.0.1, img2dataset);
2. eval index of every registered eval set (``mnist``, ``emoji``, ``clipart``) — pHash + mirror;
3. curate with preset ``lit-relaxed``, ``image.min_side=48``, eval de-duplication ``train+test``
   (LiT's choice: no image of any split of any eval set in training; all emoji leave the corpus,
   since every emoji is in the ``emoji`` set, and the ``clipart`` held-out split leaves too);
4. embed the curated images once with the locked EfficientNet-Lite0 (the cache of L? modes);
5. train Lu (cache), Uu (EfficientNet-Lite0 from ImageNet, trained) and uu (same architecture,
   random init), each with a scratch text tower (LiT's u; ``LU``/``UU`` fine-tune MiniLM) — same
   steps, batch, lr, warm-up, seed (``--seed``);
6. evaluate each run on every registered set (``load_run`` + ``evaluate_model``, what ``evaluate_run``
   does, with a key-hash subsample of ``--eval-limit`` test images per set) and write
   ``WORK/ablation-s<steps>-b<batch>.{json,md}`` (runs in ``WORK/runs/<mode>-s<steps>-b<batch>``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def prepare_data(work: Path, workers: int, caption_rule: str | None = None) -> Path:
    """The curated demo corpus in ``work`` (made once); ``caption_rule`` as ``litflow demo-data
    fetch --caption-rule`` (None: the catalogue's). A work folder keeps the rule it was ingested with."""
    import pandas as pd

    from curation.config import load_config
    from curation.curate import curate
    from curation.demo import ingest_demo
    from curation.demo_captions import DEFAULT_CAPTION_RULE
    from dedup import evalsets
    from dedup.index import build_index

    ingest_dir = work / "ingest"
    if not (ingest_dir / "ingest.json").exists():
        log(f"ingest: all demo images, captions by {caption_rule or 'the catalogue'}")
        report = ingest_demo(ingest_dir, per_source=None, caption_rule=caption_rule)
        log(f"ingest: {report['downloaded']} of {report['rows_in']} downloaded, failed {report['failed']}")
    urls = pd.read_parquet(ingest_dir / "demo_urls.parquet")
    # a URL list from before the caption rules has no column: it was title+description
    had = urls["caption_rule"].iloc[0] if "caption_rule" in urls else "title+description"
    if had != (caption_rule or DEFAULT_CAPTION_RULE):
        raise SystemExit(f"{work}: ingested with captions by {had}, not {caption_rule or DEFAULT_CAPTION_RULE}; "
                         "use another --work folder")
    index_dir = work / "evalindex"
    log(f"eval index: {evalsets.names()}")
    # no stored keypoints: the demo corpus is no larger than the eval sets, so they would not pay
    build_index([evalsets.get(n) for n in evalsets.names()], index_dir, log=log, features=False)
    curated = work / "curated"
    if not (curated / "corpus.json").exists():
        config = load_config("lit-relaxed", ["image.min_side=48", f'eval_dedup.index="{index_dir}"',
                                             'eval_dedup.mode="train+test"'])
        log("curate: lit-relaxed, image.min_side=48, eval de-dup train+test")
        manifest = curate(ingest_dir / "shards", curated, config, workers=workers)
        log(f"curate: kept {manifest.get('kept')} of {manifest.get('inputs')}")
    return curated


PAPER = {"Lu": 70.1, "Uu": 57.2, "uu": 50.6}  # LiT Table 2, ImageNet zero-shot top-1


def budget(args) -> str:
    """The runs' and outputs' name: steps, batch, and the seed when it is not 0 (seed 0's names
    are those of the runs before ``--seed`` existed)."""
    return f"s{args.steps}-b{args.batch_size}" + (f"-seed{args.seed}" if args.seed else "")


def train_run(mode: str, work: Path, curated: Path, args) -> Path:
    from training.train import TrainConfig, train

    out = work / "runs" / f"{mode}-{budget(args)}"  # the text tower follows the mode's second letter
    config = TrainConfig(shards=[str(curated / "shards")], out=str(out), mode=mode, image_tower=args.image_tower,
                         cache=str(work / "emb") if mode[0] == "L" else None,
                         batch_size=args.batch_size, steps=args.steps, lr=args.lr, warmup=args.warmup,
                         seed=args.seed, shuffle_buffer=1000, checkpoint_every=args.steps, device="cpu")
    started = time.time()
    result = train(config)
    log(f"train {mode}: step {result['step']} in {time.time() - started:.0f} s")
    return out


def run_ablation(work: Path, curated: Path, args) -> dict:
    import torch

    from training.embed_cache import embed_shards
    from training.eval_model import load_run
    from training.evaluate import evaluate_model, headline, write_outputs
    from training.image_towers import build_image_tower
    from training.metrics import read_metrics
    from training.shard_inputs import resolve_shards

    torch.set_num_threads(args.threads)
    shards = resolve_shards([curated / "shards"])
    timings = {}
    started = time.time()
    report = embed_shards(build_image_tower(args.image_tower), shards, work / "emb", batch_size=64)
    timings["embed_s"] = round(time.time() - started, 1)
    log(f"embed: {report['images']} images in {timings['embed_s']} s (skipped {report['skipped']})")
    rows = {}
    for mode in args.modes.split(","):
        t0 = time.time()
        run = train_run(mode, work, curated, args)
        timings[f"train_{mode}_s"] = round(time.time() - t0, 1)
        t0 = time.time()
        model = load_run(run)
        metrics = write_outputs(evaluate_model(model, None, "test", work / "evalcache", log=log,
                                               limit=args.eval_limit), work / "eval" / f"{mode}-{budget(args)}")
        timings[f"eval_{mode}_s"] = round(time.time() - t0, 1)
        losses = [r["loss"] for r in read_metrics(run / "metrics.jsonl")]
        rows[mode] = {"headline": headline(metrics), "sets": metrics["sets"], "step": metrics["model"]["step"],
                      "first_loss": sum(losses[:5]) / len(losses[:5]), "last_loss": sum(losses[-5:]) / len(losses[-5:])}
        write_table(work, rows, args, timings, curated)
    return rows


def write_table(work: Path, rows: dict, args, timings: dict, curated: Path) -> None:
    corpus = json.loads((curated / "corpus.json").read_text())

    def top1(row, name, prompt=None):
        s = row["sets"].get(name)
        return None if s is None else s["by_prompt_set"][prompt or s["primary"]]["top1"]

    def pct(v):
        return "–" if v is None else f"{100 * v:.1f}"

    lines = [f"Corpus: {corpus['kept']} pairs kept of {corpus['inputs']} (lit-relaxed, image.min_side=48, eval "
             f"de-dup train+test: {corpus['rejected'].get('eval_duplicate', 0)} eval duplicates removed). Budget per "
             f"mode: {args.steps} steps × batch {args.batch_size} (lr {args.lr}, warm-up {args.warmup}, seed {args.seed}); "
             f"eval: ≤ {args.eval_limit} test images per set.", "",
             "| mode | image tower | text tower | LiT Table 2 (ImageNet 0-shot) | mnist top-1 | emoji top-1 | "
             "clipart i→t R@1 | clipart t→i R@1 | clipart t→i R@10 | headline | loss first→last 5 steps |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    image = {"L": "EfficientNet-Lite0 ImageNet, locked (cache)", "U": "EfficientNet-Lite0 ImageNet init, trained",
             "u": "EfficientNet-Lite0 random init, trained"}
    text = {"L": "MiniLM-L6, locked", "U": "MiniLM-L6 init, trained", "u": "scratch transformer (4×256), trained"}
    towers = {mode: (image[mode[0]], text[mode[1]]) for mode in rows}
    for mode, row in rows.items():
        clip = row["sets"].get("clipart", {}).get("all")
        lines.append(f"| {mode} | {towers[mode][0]} | {towers[mode][1]} | {PAPER.get(mode, '')} | {pct(top1(row, 'mnist'))} | "
                     f"{pct(top1(row, 'emoji'))} | {pct(clip and clip['image_to_text']['R@1'])} | "
                     f"{pct(clip and clip['text_to_image']['R@1'])} | {pct(clip and clip['text_to_image']['R@10'])} | "
                     f"{pct(row['headline'])} | {row['first_loss']:.2f} → {row['last_loss']:.2f} |")
    chance = {n: s["by_prompt_set"][s["primary"]]["chance_top1"] for n, s in next(iter(rows.values()))["sets"].items()
              if s["task"] == "classification"}
    lines += ["", "Chance: " + ", ".join(f"{n} top-1 {100 * c:.1f}" for n, c in chance.items()) +
              "; clipart R@1 " + f"{100 / max(1, next(iter(rows.values()))['sets'].get('clipart', {}).get('images', 1)):.2f}."]
    (work / f"ablation-{budget(args)}.md").write_text("\n".join(lines) + "\n")
    (work / f"ablation-{budget(args)}.json").write_text(json.dumps({"args": vars(args), "timings": timings, "rows": rows},
                                                   indent=2, sort_keys=True, default=str) + "\n")
    log("\n" + "\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="work/ablation")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--eval-limit", type=int, default=400, help="test images per eval set (key-hash subsample)")
    parser.add_argument("--image-tower", default="efficientnet-lite0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--modes", default="Lu,Uu,uu")
    parser.add_argument("--seed", type=int, default=0, help="training seed (model init, shuffle); the data and the "
                        "embedding cache are shared by every seed")
    parser.add_argument("--data-only", action="store_true", help="stop after curation")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    curated = prepare_data(work, args.workers)
    if args.data_only:
        return 0
    run_ablation(work, curated, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
