"""``litflow embed``, ``litflow train`` and ``litflow evaluate`` (torchrun runs ``-m flows.cli``).

Under torchrun (WORLD_SIZE > 1) ``embed`` splits the shards over ranks and ``train`` joins
the process group; run plainly, both use one process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from flows.cli_dedup import add_evalsets_flag


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
    from flows.config_flags import image_fit

    tower = build_image_tower(args.image_tower, **image_fit(args))
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

    from training.config import load_train_config
    from training.train import train

    from flows.config_flags import given

    fields = given(args, _TRAIN_FLAGS)
    text = given(args, _TEXT_FLAGS)
    if text:
        fields["text"] = text
    config = load_train_config(args.config, fields, args.set)
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


# Every TrainConfig field is a flag (text fields as --text-NAME): {argparse dest: field name}
_TRAIN_FLAGS: dict[str, str] = {}
_TEXT_FLAGS: dict[str, str] = {}


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    from flows.config_flags import add_model_flags
    from training.config import TextSpec, TrainConfig

    parser.add_argument("shards", nargs="*", default=argparse.SUPPRESS,
                        help=TrainConfig.model_fields["shards"].description)
    _TRAIN_FLAGS.update(add_model_flags(parser, TrainConfig, skip=("shards", "text")), shards="shards")
    _TEXT_FLAGS.update(add_model_flags(parser, TextSpec, flag_prefix="text-", dest_prefix="text_"))


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
    from flows.config_flags import add_image_fit_flags

    add_image_fit_flags(e)
    e.set_defaults(func=_embed)

    t = sub.add_parser("train", help="LiT training (modes LU, Lu, LL from the cache; Uu, uu, ...); a torchrun entry point",
                       description="Contrastive image-text training over the global batch. Options come from "
                       "a run file (--config), flags and --set, in that order. Resumes from OUT/checkpoint.pt; "
                       "writes OUT/config.json (the whole resolved config), OUT/metrics.jsonl and OUT/metrics.png. "
                       "Multi-node: torchrun ... -m flows.cli train ... (see infra/torchrun/).")
    t.add_argument("--config", metavar="FILE", help="run file (TOML, or a run's config.json); flags and --set override it")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one option, e.g. --set lr=3e-4 --set text.name=scratch (repeatable; last wins)")
    _add_train_flags(t)
    t.set_defaults(func=_train)

    v = sub.add_parser("evaluate", help="zero-shot classification and retrieval of a training run",
                       description="Evaluate RUN (a `litflow train` folder) on registered eval sets: zero-shot "
                       "top-1/top-5 with prompt ensembles, image<->text R@1/5/10, per language. Writes "
                       "OUT/metrics.json and OUT/summary.md. No network.")
    v.add_argument("run", help="training run folder (checkpoint.pt, tokenizer.json for scratch text towers)")
    v.add_argument("--out", required=True, help="output folder")
    add_evalsets_flag(v)
    v.add_argument("--sets", nargs="+", help="eval sets by name (default: every set of the --evalsets files, "
                   "or the demo sets mnist, emoji, clipart)")
    v.add_argument("--split", default="test")
    v.add_argument("--cache", help="image-feature cache folder (a locked tower embeds each eval set once)")
    v.add_argument("--prompts", action="append", metavar="SET=PROMPTSET[,...]",
                   help="prompt sets for a classification set: shipped names (imagenet80, generic, generic-de, "
                   "generic-fr, generic-es, mnist, emoji) or .json files; first is primary. Repeatable.")
    v.set_defaults(func=_evaluate)

