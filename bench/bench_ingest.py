"""Ingestion benchmark: images/s for both img2dataset distributors on one loopback URL list.

    .venv/bin/python bench/bench_ingest.py [--per-source 1100]

Both runs read the same URL list (real openclipart + emoji images served from 127.0.0.1) in
the same process, one after the other. The pyspark run goes through a real standalone
cluster (master + one 2-core worker) started here; cluster start-up is not timed.
Time is split into: our wrapper (URL vetting + accounting + report), img2dataset (download,
decode, resize, write), and inside img2dataset our decode gate (Pillow header/draft check),
measured by re-running the gate over the same bytes in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pandas as pd  # noqa: E402

from curation.demo_data import fetch_all, write_url_list  # noqa: E402
from curation.file_server import serve_folder  # noqa: E402
from curation.ingest import IngestConfig, ingest  # noqa: E402
from curation.strict_resizer import inspect_image_bytes  # noqa: E402
from infra.spark.cluster import SparkCluster, free_port  # noqa: E402


def gate_seconds(cache: Path, url_list: Path) -> float:
    paths = [cache / u.split("/", 3)[3] for u in pd.read_parquet(url_list)["url"]]
    from urllib.parse import unquote

    blobs = [Path(unquote(str(p))).read_bytes() for p in paths]
    started = time.perf_counter()
    for blob in blobs:
        inspect_image_bytes(blob)
    return time.perf_counter() - started


def run(url_list: Path, out: Path, config: IngestConfig) -> dict:
    started = time.perf_counter()
    report = ingest(url_list, out, config)
    wall = time.perf_counter() - started
    return {
        "rows": report["rows_in"],
        "downloaded": report["downloaded"],
        "failed": report["failed"],
        "wall_s": wall,
        "img2dataset_s": report["img2dataset_s"],
        "images_per_s": report["downloaded"] / wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-source", type=int, default=1100, help="images per demo source (default 1100: 2200 rows)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", default="bench/results/ingest.json")
    args = parser.parse_args()

    data = fetch_all()
    results: dict = {"cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="litflow-bench-") as tmp, serve_folder(data.cache) as base_url:
        tmp = Path(tmp)
        url_list = write_url_list(data.catalogue, base_url, tmp / "urls.parquet", args.per_source)
        common = dict(processes=args.processes, threads=32, samples_per_shard=500, allow=("127.0.0.1",))
        results["multiprocessing"] = run(url_list, tmp / "mp", IngestConfig(**common))
        cluster = SparkCluster(tmp / "spark-state", master_port=free_port(), master_webui_port=free_port(),
                               worker_cores=args.processes, worker_memory="4g").start()
        try:
            results["pyspark"] = run(url_list, tmp / "spark",
                                     IngestConfig(distributor="pyspark", spark_master=cluster.master_url, **common))
        finally:
            cluster.stop()
        results["decode_gate_s"] = gate_seconds(data.cache, url_list)

    print(f"\nIngestion benchmark: {results['multiprocessing']['rows']} loopback URLs, {args.processes} processes, "
          f"{os.cpu_count()} cores")
    print(f"{'distributor':<16}{'images/s':>10}{'wall s':>9}{'img2dataset':>13}{'wrapper':>9}{'gate':>7}")
    for name in ("multiprocessing", "pyspark"):
        r = results[name]
        wrapper = r["wall_s"] - r["img2dataset_s"]
        # the gate runs inside img2dataset's workers, spread over `processes` cores
        gate_share = results["decode_gate_s"] / args.processes / r["wall_s"]
        r["wrapper_share"], r["img2dataset_share"], r["gate_share"] = wrapper / r["wall_s"], r["img2dataset_s"] / r["wall_s"], gate_share
        print(f"{name:<16}{r['images_per_s']:>10.1f}{r['wall_s']:>9.1f}{r['img2dataset_share']:>12.1%}"
              f"{r['wrapper_share']:>9.1%}{gate_share:>7.1%}")
    print(f"pyspark / multiprocessing throughput: {results['pyspark']['images_per_s'] / results['multiprocessing']['images_per_s']:.2f}")
    print(f"decode gate: {results['decode_gate_s'] / results['multiprocessing']['rows'] * 1000:.2f} ms/image (single core)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
