"""``litflow dedup index``, ``report`` and ``flag`` (registered by flows/cli.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dedup.modes import MODES


def _default_index() -> Path:
    from infra.paths import default_work_dir

    return default_work_dir() / "dedup" / "index"


def _index(args: argparse.Namespace) -> int:
    from dedup import evalsets
    from dedup.index import build_index
    from dedup.phash import HashSettings

    chosen = evalsets.select(args.sets.split(",") if args.sets else None, args.evalsets)
    settings = HashSettings(jpeg_draft=args.jpeg_draft or None)
    report = build_index(chosen, args.out or _default_index(), settings, log=print,
                         features=not args.no_keypoints, workers=args.workers)
    unreadable = {k: len(v) for k, v in report.unreadable.items() if v}
    print(json.dumps({"index": str(report.path), "settings": settings.id,
                      "reindexed": [f"{a}/{b}" for a, b in report.reindexed],
                      "unchanged": [f"{a}/{b}" for a, b in report.reused], "unreadable": unreadable}, indent=2))
    return 0


def _report(args: argparse.Namespace) -> int:
    import pandas as pd

    from curation.eval_audit import audit_corpus

    embedding = pd.read_parquet(args.candidates) if args.candidates else None
    summary = audit_corpus(args.corpus, args.index or _default_index(), args.out, radius=args.radius,
                           mode=args.mode, near_radius=None if args.near_radius < 0 else args.near_radius,
                           page_size=args.page_size, embedding_matches=embedding, verify=not args.no_verify)
    print(json.dumps({"out": str(args.out), "pairs": summary["corpus"]["pairs"],
                      "candidates": summary["corpus"]["candidates"],
                      "matched": summary["corpus"]["matched"], "removed": summary["corpus"]["removed"]}, indent=2))
    return 0


def _flag(args: argparse.Namespace) -> int:
    from flows.config_flags import image_fit
    from training.eval_flags import flag_corpus

    fit = image_fit(args)
    result = flag_corpus(args.corpus, args.cache, args.index or _default_index(), args.out,
                         image_tower=args.image_tower, mode=args.mode, top_k=args.top_k, min_cosine=args.min_cosine,
                         image_fit=fit["fit"], image_fill=fit["fill"])
    print(json.dumps(result, indent=2))
    return 0


def add_evalsets_flag(parser) -> None:
    """``--evalsets FILE``, the same on every command that picks eval sets (dedup index, evaluate)."""
    parser.add_argument("--evalsets", action="append", default=[], metavar="FILE",
                        help="eval sets declared in a TOML file (repeatable; see README, 'Your own eval sets')")


def add_commands(subparsers) -> None:
    dedup = subparsers.add_parser("dedup", help="de-duplicate a corpus against evaluation sets (index, report)")
    sub = dedup.add_subparsers(dest="dedup_command", required=True, metavar="ACTION")
    p = sub.add_parser("index", help="hash every image of every split of the eval sets into an index",
                       description="Hash (pHash + mirror pHash) every image of every split of the eval sets, "
                       "and store its verification keypoints. Splits whose content is unchanged are not "
                       "re-hashed; unreadable images are listed.")
    add_evalsets_flag(p)
    p.add_argument("--sets", help="comma-separated eval set names (default: every set of the --evalsets files, "
                   "or the demo sets mnist, emoji, clipart)")
    p.add_argument("--out", help="index folder (default: work/dedup/index)")
    p.add_argument("--jpeg-draft", type=int, default=64,
                   help="reduced JPEG decode: shorter side >= this many px (0 = full decode; default 64). "
                   "Must be the corpus's setting")
    p.add_argument("--workers", type=int, default=1,
                   help="processes computing the verification keypoints, each image's and its mirror's "
                        "(about 40 ms an image; default 1)")
    p.add_argument("--no-keypoints", action="store_true",
                   help="store no verification keypoints: verification then runs SIFT on both images of "
                   "every candidate pair (slower; the decisions are the same)")
    p.set_defaults(func=_index)
    r = sub.add_parser("report", help="match a corpus against the index; write report.json, matches.parquet, report.html",
                       description="Match the corpus's shards against the eval index and write the audit report.")
    r.add_argument("corpus", help="folder of webdataset shards (or with shards/), optionally corpus.json")
    r.add_argument("out", help="output folder")
    r.add_argument("--index", help="index folder (default: work/dedup/index)")
    r.add_argument("--radius", type=int, default=8, help="pHash Hamming radius (default 8)")
    r.add_argument("--mode", choices=MODES, default="train+test",
                   help="which eval splits count as removals (default train+test, as LiT)")
    r.add_argument("--near-radius", type=int, default=4, help="intra-corpus near-duplicate radius (-1 = skip)")
    r.add_argument("--page-size", type=int, default=50, help="matches per page in report.html")
    r.add_argument("--candidates", help="eval_candidates.parquet from `litflow dedup flag` (embedding signal)")
    r.add_argument("--no-verify", action="store_true",
                   help="count every pHash candidate (no geometric verification; pHash alone is loose on graphics)")
    r.set_defaults(func=_report)
    f = sub.add_parser("flag", help="embedding check: flag eval duplicates from training's embedding cache",
                       description="Take each corpus pair's nearest eval images by the locked tower's cached "
                       "embeddings, verify each candidate geometrically, and write eval_flags.parquet (confirmed: "
                       "pass it to `litflow train --exclude`) and eval_candidates.parquet (all, for the report). "
                       "Shards are not rewritten.")
    f.add_argument("corpus", help="curated corpus folder (with shards/)")
    f.add_argument("out", help="output folder")
    f.add_argument("--cache", required=True, help="embedding cache root (`litflow embed`)")
    f.add_argument("--index", help="eval index folder (default: work/dedup/index)")
    f.add_argument("--image-tower", default="efficientnet-lite0", help="the tower the cache was built with")
    f.add_argument("--mode", choices=("test", "train+test"), default="train+test")
    f.add_argument("--top-k", type=int, default=3, help="nearest eval images verified per corpus pair (default 3)")
    f.add_argument("--min-cosine", type=float, default=0.5, help="candidates need at least this cosine (default 0.5)")
    from flows.config_flags import add_image_fit_flags

    add_image_fit_flags(f)  # as the cache was embedded
    f.set_defaults(func=_flag)
