"""``litflow curate`` (registered by flows/cli.py)."""

from __future__ import annotations

import argparse
import json
import logging
import os


def _curate(args: argparse.Namespace) -> int:
    from curation.config import load_config
    from curation.curate import curate

    from pathlib import Path

    from flows.terminal import ticking

    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    config = load_config(args.preset, args.set, args.config)
    shards = Path(args.output) / "shards"
    with ticking("curating with Beam", count=lambda: len(list(shards.glob("*.tar"))),
                 unit="curated shards written"):
        manifest = curate(args.raw, args.output, config, workers=args.workers, beam_args=args.beam_arg)
    print(json.dumps({k: manifest[k] for k in ("inputs", "kept", "rejected", "accounting")}, indent=2))
    print(f"manifest: {os.path.join(args.output, 'corpus.json')}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser(
        "curate",
        help="Beam pipeline: raw shards -> curated shards, rejections and corpus.json",
        description="Curate raw webdataset shards (an ingest output's shards/ folder) with ALIGN-style "
        "image and text filters, language tags and perceptual hashes. Writes, per raw shard STEM, "
        "OUTPUT/shards/STEM.tar+.parquet and OUTPUT/rejected/STEM.parquet, then OUTPUT/corpus.json (every rule "
        "and threshold, counts per stage and reason, per-language counts). RAW and OUTPUT may be local paths or "
        "any Beam file system (gs://, s3://). OUTPUT is replaced. Fails if inputs != kept + rejected.",
    )
    p.add_argument("raw", help="folder (or gs://, s3://, … URL) of raw shards (*.tar), e.g. work/demo/ingest/shards")
    p.add_argument("output", help="output folder (replaced)")
    p.add_argument("--preset", choices=("align", "lit-relaxed"),
                   help="filter preset (default: the --config file's preset, else align)")
    p.add_argument("--config", metavar="FILE", help="rules in a TOML file ([image], [text], ... sections as in "
                   "corpus.json's config, and an optional preset); --set overrides it")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a rule, e.g. --set image.min_side=100 --set text.rare_tokens_enabled=false (repeatable)")
    p.add_argument("--workers", type=int, default=None,
                   help="the local runner's worker processes (default: one process when the raw shards total at most "
                   "32 MiB, where starting workers costs more than they save; else one per core, at most one per raw shard)")
    p.add_argument("--beam-arg", action="append", default=[], metavar="ARG",
                   help="a Beam pipeline option passed through, e.g. --beam-arg=--runner=FlinkRunner (repeatable)")
    p.set_defaults(func=_curate)
