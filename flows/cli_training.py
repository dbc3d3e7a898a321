"""``litflow embed``, ``litflow train`` and ``litflow evaluate`` (torchrun runs ``-m flows.cli``).

Under torchrun (WORLD_SIZE > 1) ``embed`` splits the shards over ranks and ``train`` joins
the process group; run plainly, both use one process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _embed(args: argparse.Namespace) -> int:
    import torch

    from training import distributed as D
    from training.embed_cache import embed_shards
    from training.image_towers import build_image_tower
    from training.shard_inputs import resolve_shards
    from training.train import pick_device

    device = pick_device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
    info = D.init_from_env(device)
    shards = resolve_shards(args.shards)
    tower = build_image_tower(args.image_tower)
    report = embed_shards(tower, shards, args.cache, batch_size=args.batch_size, dtype=args.dtype,
                          rank=info.rank, world=info.world, device=device)
    D.barrier()
    report.update(rank=info.rank, world=info.world, tower=tower.name, fingerprint=tower.fingerprint)
    print(json.dumps(report, indent=2))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def _train(args: argparse.Namespace) -> int:
    import torch

    from training.text_towers import TextSpec
    from training.train import TrainConfig, train

    config = TrainConfig(
        shards=args.shards, out=args.out, mode=args.mode, image_tower=args.image_tower,
        image_source=args.image_source, cache=args.cache,
        text=TextSpec(args.text_tower, args.max_tokens, args.text_width, args.text_depth, args.text_heads, args.vocab_size),
        embed_dim=args.embed_dim, image_head=args.image_head, text_head=not args.no_text_head,
        batch_size=args.batch_size, steps=args.steps, lr=args.lr, weight_decay=args.weight_decay,
        warmup=args.warmup, clip=args.clip, seed=args.seed, shuffle_buffer=args.shuffle_buffer,
        workers=args.workers, precision=args.precision, checkpoint_every=args.checkpoint_every, device=args.device,
        exclude=args.exclude or [])
    from flows.terminal import step_bar

    on_step, close = step_bar(config.steps, f"training {config.mode}") if int(os.environ.get("RANK", "0")) == 0 \
        else (None, lambda: None)
    try:
        result = train(config, on_step=on_step)
    finally:
        close()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if result["rank"] == 0:
        print(json.dumps(result, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from training.eval_model import load_run
    from training.evaluate import evaluate_model, write_outputs

    prompts: dict[str, list[str]] = {}
    for spec in args.prompts or []:
        name, sep, sets = spec.partition("=")
        if not sep or not sets:
            raise ValueError(f"--prompts {spec!r}: expected SET=PROMPTSET[,PROMPTSET...]")
        prompts[name] = sets.split(",")
    model = load_run(args.run)
    metrics = evaluate_model(model, args.sets, args.split, args.cache, prompts,
                             log=lambda message: print(message, file=sys.stderr, flush=True),
                             evalset_files=args.evalsets)
    write_outputs(metrics, args.out)
    print(json.dumps({"out": args.out, "headline": metrics["headline"],
                      "sets": sorted(metrics["sets"])}, indent=2))
    return 0


def add_commands(sub) -> None:
    e = sub.add_parser("embed", help="run the locked image tower once per curated image (embedding cache)",
                       description="Embed every image of the curated shards with a locked image tower; writes "
                       "CACHE/<tower>-<hash>/NAME.npy (L2-normalised) + NAME.keys.txt per shard. Resumes: "
                       "shards already embedded are skipped. Under torchrun the ranks split the shards.")
    e.add_argument("shards", nargs="+", help="curated shard folders or NAME.tar files")
    e.add_argument("--cache", required=True, help="embedding cache root")
    e.add_argument("--image-tower", default="efficientnet-lite0", help="efficientnet-lite0 | vit-s-focus | hf:<path> | tiny")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda")
    e.set_defaults(func=_embed)

    t = sub.add_parser("train", help="LiT training (Lu from the cache, Uu, uu); a torchrun entry point",
                       description="Contrastive image-text training over the global batch. Resumes from "
                       "OUT/checkpoint.pt; writes OUT/metrics.jsonl and OUT/metrics.png. Multi-node: "
                       "torchrun ... -m flows.cli train ... (see infra/torchrun/).")
    t.add_argument("shards", nargs="+", help="curated shard folders or NAME.tar files")
    t.add_argument("--out", required=True, help="run folder (checkpoint, metrics, tokenizer)")
    t.add_argument("--mode", choices=("Lu", "Uu", "uu"), default="Lu")
    t.add_argument("--image-tower", default="efficientnet-lite0")
    t.add_argument("--image-source", choices=("cache", "images"), default="cache",
                   help="Lu only: cached embeddings, or run the locked tower on every batch")
    t.add_argument("--cache", help="embedding cache root (Lu from the cache)")
    t.add_argument("--text-tower", default="minilm", help="minilm | bert:<path> | scratch")
    t.add_argument("--max-tokens", type=int, default=16)
    t.add_argument("--text-width", type=int, default=256, help="scratch tower width")
    t.add_argument("--text-depth", type=int, default=4, help="scratch tower layers")
    t.add_argument("--text-heads", type=int, default=4, help="scratch tower attention heads")
    t.add_argument("--vocab-size", type=int, default=8000, help="scratch tokenizer vocabulary")
    t.add_argument("--embed-dim", type=int, help="shared embedding size (default: the image feature size)")
    t.add_argument("--image-head", action="store_true", help="a linear head on the image side too")
    t.add_argument("--no-text-head", action="store_true", help="no linear head on the text side (sizes must match)")
    t.add_argument("--batch-size", type=int, default=256, help="global batch (split over ranks)")
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, help="default 0 for Lu, 1e-4 otherwise")
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--shuffle-buffer", type=int, default=1000)
    t.add_argument("--workers", type=int, default=0, help="data loader workers per rank")
    t.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    t.add_argument("--checkpoint-every", type=int, default=100)
    t.add_argument("--device", default="auto", help="auto | cpu | cuda")
    t.add_argument("--exclude", action="append", metavar="FILE",
                   help="parquet file with a 'key' column (e.g. dedup's eval_flags.parquet): pairs with those "
                   "curated keys are skipped, shards untouched; other columns ignored. Repeatable. The key set "
                   "is part of the run's identity: resuming with another set is refused")
    t.set_defaults(func=_train)

    v = sub.add_parser("evaluate", help="zero-shot classification and retrieval of a training run",
                       description="Evaluate RUN (a `litflow train` folder) on registered eval sets: zero-shot "
                       "top-1/top-5 with prompt ensembles, image<->text R@1/5/10, per language. Writes "
                       "OUT/metrics.json and OUT/summary.md. No network.")
    v.add_argument("run", help="training run folder (checkpoint.pt, tokenizer.json for scratch text towers)")
    v.add_argument("--out", required=True, help="output folder")
    v.add_argument("--evalsets", action="append", default=[], metavar="FILE",
                   help="eval sets declared in a TOML file (repeatable; see README, 'Your own eval sets')")
    v.add_argument("--sets", nargs="+", help="eval sets by name (default: every set of the --evalsets files, "
                   "or the demo sets mnist, emoji, clipart)")
    v.add_argument("--split", default="test")
    v.add_argument("--cache", help="image-feature cache folder (a locked tower embeds each eval set once)")
    v.add_argument("--prompts", action="append", metavar="SET=PROMPTSET[,...]",
                   help="prompt sets for a classification set: shipped names (imagenet80, generic, generic-de, "
                   "generic-fr, generic-es, mnist, emoji) or .json files; first is primary. Repeatable.")
    v.set_defaults(func=_evaluate)

