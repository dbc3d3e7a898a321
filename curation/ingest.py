"""Ingestion: a URL list becomes raw webdataset shards, every input row accounted for.

Layout of an ingest output folder::

    OUT/vetted.parquet          rows that passed the URL policy (+ ``row``: index in the input)
    OUT/shards/NNNNN.tar        img2dataset webdataset shards (KEY.jpg, KEY.txt, KEY.json)
    OUT/shards/NNNNN.parquet    every row of the shard, failures too (img2dataset)
    OUT/shards/NNNNN_stats.json img2dataset's per-shard stats; its presence marks a finished shard
    OUT/rejected.parquet        every input row that did not become a sample: row, url, reason, detail
    OUT/ingest.json             the stage report: rows_in = downloaded + Σ failed[reason]

img2dataset does the downloading and resizing (multiprocessing, or pyspark against a Spark
master); this module vets the list first (:mod:`curation.url_safety`), gates decoding
(:mod:`curation.strict_resizer`) and turns img2dataset's free-text errors into reasons.
Re-running on the same folder resumes: img2dataset skips shards whose stats file exists.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from curation.provenance import code_revision, library_versions
from curation.reasons import IngestReason, classify_error
from curation.strict_resizer import DEFAULT_MAX_PIXELS, strict_resizing
from curation.url_list import read_url_list
from curation.url_safety import UrlPolicy, cached_resolver

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home on import

# img2dataset reserves these names; a URL list's own column of that name is carried as src_<name>
RESERVED_COLUMNS = {
    "key", "caption", "url", "width", "height", "original_width", "original_height",
    "status", "error_message", "exif", "md5", "sha256", "sha512", "row",
}
DISTRIBUTORS = ("multiprocessing", "pyspark")


class AccountingError(RuntimeError):
    """Rows in != downloaded + failed: something was lost, and the run must not pass."""


@dataclass
class IngestConfig:
    image_size: int = 256
    resize_mode: str = "keep_ratio"      # shorter side to image_size, aspect kept
    resize_only_if_bigger: bool = True   # never invent pixels for small images
    encode_format: str = "jpg"
    encode_quality: int = 95
    samples_per_shard: int = 1000
    processes: int = field(default_factory=lambda: os.cpu_count() or 1)
    threads: int = 32
    timeout_s: int = 10
    retries: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    distributor: str = "multiprocessing"
    spark_master: str | None = None      # e.g. spark://127.0.0.1:7077 or local[2]
    spark_driver_host: str | None = None
    allow: tuple[str, ...] = ()          # hosts / IPs / CIDRs the URL policy lets through
    url_col: str = "url"
    caption_col: str = "caption"

    def __post_init__(self) -> None:
        if self.distributor not in DISTRIBUTORS:
            raise ValueError(f"unknown distributor {self.distributor!r}; choose one of {', '.join(DISTRIBUTORS)}")
        if self.samples_per_shard < 1 or self.image_size < 1 or self.processes < 1:
            raise ValueError("samples_per_shard, image_size and processes must be positive")
        self.allow = tuple(self.allow)


def vet_rows(frame: pd.DataFrame, policy: UrlPolicy) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a URL list into (vetted rows, rejected rows) by the URL policy."""
    resolve = cached_resolver()
    kept, rejected = [], []
    for row, url in enumerate(frame["url"]):
        url = url.strip()
        problem = "empty url" if not url else policy.check(url, resolve=resolve)
        if problem is None:
            kept.append(row)
            continue
        reason = IngestReason.BLOCKED_ADDRESS if "internal address" in problem else (
            IngestReason.DNS_FAILURE if "does not resolve" in problem else IngestReason.INVALID_URL
        )
        rejected.append({"row": row, "url": url, "reason": reason.value, "detail": problem})
    vetted = frame.iloc[kept].copy()
    vetted.insert(0, "row", kept)
    vetted = vetted.rename(columns={c: f"src_{c}" for c in vetted.columns if c in RESERVED_COLUMNS - {"row", "url", "caption"}})
    return vetted.reset_index(drop=True), pd.DataFrame(rejected, columns=["row", "url", "reason", "detail"])


def _run_img2dataset(vetted_path: Path, shards: Path, extra_columns: list[str], config: IngestConfig) -> None:
    from img2dataset import download

    kwargs = dict(
        url_list=str(vetted_path),
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        save_additional_columns=["row", *extra_columns],
        output_folder=str(shards),
        output_format="webdataset",
        image_size=config.image_size,
        resize_mode=config.resize_mode,
        resize_only_if_bigger=config.resize_only_if_bigger,
        encode_format=config.encode_format,
        encode_quality=config.encode_quality,
        number_sample_per_shard=config.samples_per_shard,
        processes_count=config.processes,
        thread_count=config.threads,
        timeout=config.timeout_s,
        retries=config.retries,
        extract_exif=False,
        compute_hash="sha256",
        enable_wandb=False,
        incremental_mode="incremental",
        distributor=config.distributor,
    )
    with strict_resizing(config.max_pixels):
        if config.distributor == "pyspark":
            from infra.spark.session import spark_session

            master = config.spark_master or f"local[{config.processes}]"
            with spark_session(master, app_name="litflow-ingest", driver_host=config.spark_driver_host):
                download(**kwargs)
        else:
            download(**kwargs)


def collect_outcomes(shards: Path) -> pd.DataFrame:
    """Every row img2dataset wrote into its per-shard parquet files (successes and failures)."""
    files = sorted(shards.glob("*.parquet"))
    columns = ["row", "key", "url", "status", "error_message", "width", "height",
               "original_width", "original_height", "sha256"]
    if not files:
        return pd.DataFrame(columns=columns)
    frames = [pd.read_parquet(f, columns=columns).assign(shard=f.stem) for f in files]
    return pd.concat(frames, ignore_index=True)


def account(rows_in: int, vetted: pd.DataFrame, prefilter_rejected: pd.DataFrame,
            outcomes: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """Counts per outcome and the full rejection table; raise if any row is lost or doubled."""
    if outcomes["row"].duplicated().any():
        dup = outcomes.loc[outcomes["row"].duplicated(), "row"].tolist()[:5]
        raise AccountingError(f"rows written twice by img2dataset: {dup}")
    ok = outcomes["status"] == "success"
    failed = outcomes.loc[~ok, ["row", "url", "error_message"]].copy()
    failed["reason"] = failed["error_message"].map(lambda m: classify_error(m).value)
    failed = failed.rename(columns={"error_message": "detail"})
    missing_rows = sorted(set(vetted["row"]) - set(outcomes["row"]))
    missing = vetted.set_index("row").loc[missing_rows, ["url"]].reset_index()
    missing["reason"], missing["detail"] = IngestReason.SHARD_FAILED.value, "shard never completed"
    rejected = (
        pd.concat([prefilter_rejected, failed, missing], ignore_index=True)
        .astype({"row": "int64"})
        .sort_values("row")
        .reset_index(drop=True)[["row", "url", "reason", "detail"]]
    )
    counts = {
        "rows_in": rows_in,
        "downloaded": int(ok.sum()),
        "failed": {k: int(v) for k, v in sorted(rejected["reason"].value_counts().items())},
    }
    total = counts["downloaded"] + sum(counts["failed"].values())
    if total != rows_in or set(rejected["row"]) & set(outcomes.loc[ok, "row"]):
        raise AccountingError(f"rows_in={rows_in} but downloaded + failed = {total}")
    return counts, rejected


def ingest(url_list: str | Path, out_dir: str | Path, config: IngestConfig | None = None) -> dict:
    """Download and resize a URL list into raw webdataset shards; return the stage report."""
    config = config or IngestConfig()
    url_list, out_dir = Path(url_list), Path(out_dir)
    started = time.perf_counter()
    frame = read_url_list(url_list, config.url_col, config.caption_col)
    policy = UrlPolicy.allowing(config.allow)
    vetted, prefilter_rejected = vet_rows(frame, policy)
    extra_columns = [c for c in vetted.columns if c not in ("row", "url", "caption")]

    out_dir.mkdir(parents=True, exist_ok=True)
    shards = out_dir / "shards"
    vetted_path = out_dir / "vetted.parquet"
    vetted.to_parquet(vetted_path, index=False)
    downloader_started = time.perf_counter()
    if len(vetted):
        _run_img2dataset(vetted_path, shards, extra_columns, config)
    downloader_s = time.perf_counter() - downloader_started

    outcomes = collect_outcomes(shards)
    counts, rejected = account(len(frame), vetted, prefilter_rejected, outcomes)
    rejected.to_parquet(out_dir / "rejected.parquet", index=False)
    report = {
        "stage": "ingest",
        "input": str(url_list.resolve()),
        "output": str(out_dir.resolve()),
        **counts,
        "shards": sorted(p.name for p in shards.glob("*.tar")),
        "url_policy": policy.describe(),
        "config": asdict(config),
        "elapsed_s": round(time.perf_counter() - started, 3),
        "img2dataset_s": round(downloader_s, 3),
        "versions": library_versions(),
        "code_revision": code_revision(),
    }
    tmp = out_dir / "ingest.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp.replace(out_dir / "ingest.json")
    return report
