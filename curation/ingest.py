"""Ingestion: a URL list becomes raw webdataset shards, every input row accounted for.

A URL list is one file, a folder or a glob of parquet/csv/tsv *parts* (:mod:`curation.url_list`).
Layout of an ingest output folder::

    OUT/vetted/PPPPP-CCCCC.parquet  chunk C of part P (+ ``part``, ``row``); refused rows with no url
    OUT/parts/PPPPP.json            part P's vetting: source file (size, mtime), rows, refused rows
    OUT/parts/PPPPP.refused.parquet part P's rows refused before any request (row, url, reason, detail)
    OUT/shards/NNNNN.tar            img2dataset webdataset shards (KEY.jpg, KEY.txt, KEY.json)
    OUT/shards/NNNNN.parquet        every row of the shard, failures too (img2dataset)
    OUT/shards/NNNNN_stats.json     img2dataset's per-shard stats; its presence marks a finished shard
    OUT/rejected.parquet            every input row that did not become a sample: part, row, url, reason, detail
    OUT/ingest.json                 the stage report: rows_in = downloaded + Σ failed[reason], per part and in
                                    total; the hosts with most failures (:mod:`curation.host_report`)

A row is identified by ``(part, row)``: the part's number (its rank among the parts by name)
and the row's number in its part. img2dataset is given the folder of vetted chunks: it reads
them in name order and numbers shards across them, so keys (shard + index) never collide
between parts, and each chunk's shards are a known contiguous range (its rows / shard size,
rounded up; refused rows stay in the chunk without a url, so the range never depends on what
the URL policy or DNS said). This is the least fragile way found to feed it many parts: one
run, its own resume (``incremental`` mode skips shards whose stats file exists), and nothing
in it patched; it reads one chunk file at a time.

Re-running on the same folder resumes per part: a part whose vetting report matches its file
(size and mtime) is not read again, and img2dataset skips the shards it finished.

Memory: one chunk of a part (default 65,536 rows) while vetting, in img2dataset's reader and
while accounting (with one shard's outcomes and the part's refused row numbers). Nothing holds
the whole list.

img2dataset runs the shards and resizes (multiprocessing, or pyspark against a Spark
master); this module vets the list first (:mod:`curation.url_safety`), has every fetch made
by :mod:`curation.fetch` (each hop checked, bounded, polite; :mod:`curation.guarded_download`),
gates decoding (:mod:`curation.strict_resizer`) and turns failures into reasons.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from curation.guarded_download import guarded_downloading
from curation.host_report import HostTally
from curation.ingest_config import IngestConfig
from curation.ingest_page import render_ingest_page
from curation.provenance import code_revision, library_versions
from curation.retry_rounds import (OUTCOME_COLUMNS, Round, account_round_part, completed_rounds, finish_round,
                                   never_completed, plan_round, settle, shards_of)
from curation.strict_resizer import strict_resizing
from curation.url_list import UrlListError, iter_chunks, list_parts
from curation.url_safety import Refused, UrlPolicy, cached_resolver
from infra.contract import (INGEST_REJECTED_FIELDS, INGEST_REJECTED_SCHEMA, AccountingError, IngestPart, IngestReason,
                             IngestReport)
from infra.files import replacing, write_json_atomic, write_text_atomic

# img2dataset reserves these names; a URL list's own column of that name is carried as src_<name>
RESERVED_COLUMNS = {
    "key", "caption", "url", "width", "height", "original_width", "original_height",
    "status", "error_message", "exif", "md5", "sha256", "sha512", "row", "part",
}


def vet_rows(frame: pd.DataFrame, policy: UrlPolicy, resolve=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a chunk (with its ``row`` column, see :func:`_with_identity`) into (vetted rows,
    refused rows) by the URL policy."""
    resolve = resolve or cached_resolver()
    kept, rejected = [], []
    for position, (row, url) in enumerate(zip(frame["row"], frame["url"])):
        url = url.strip()
        try:
            if not url:
                raise Refused(IngestReason.INVALID_URL, "empty url")
            policy.addresses(url, resolve, resolve_allowed_hosts=False)
        except Refused as refused:
            rejected.append({"row": int(row), "url": url, "reason": refused.reason.value, "detail": str(refused)})
            continue
        kept.append(position)
    return frame.iloc[kept].reset_index(drop=True), pd.DataFrame(rejected, columns=["row", "url", "reason", "detail"])


def _with_identity(frame: pd.DataFrame, part: int) -> pd.DataFrame:
    """The list's columns that img2dataset reserves renamed ``src_<name>``, then ``part`` and
    ``row`` (the index: the row's number in its part) in front."""
    frame = frame.rename(columns={c: f"src_{c}" for c in frame.columns if c in RESERVED_COLUMNS - {"url", "caption"}})
    frame.insert(0, "row", frame.index.astype("int64"))
    frame.insert(0, "part", part)
    return frame


def _source_of(path: Path) -> dict:
    stat = path.stat()
    return {"file": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _write_table(path: Path, table: pa.Table) -> None:
    with replacing(path) as tmp:
        pq.write_table(table, tmp)


def _chunk_name(part: int, chunk: int) -> str:
    return f"{part:05d}-{chunk:05d}.parquet"


def vet_part(number: int, path: Path, out_dir: Path, policy: UrlPolicy, config: IngestConfig,
             columns: list[str] | None) -> dict:
    """Vet one part chunk by chunk: each chunk becomes ``vetted/PPPPP-CCCCC.parquet`` (all its
    rows, the refused ones with an empty url) and the refusals ``parts/PPPPP.refused.parquet``;
    returns the part's report (``parts/PPPPP.json``, written last). ``columns``: the first
    part's columns, which every part must have (img2dataset carries the same extra columns).

    Refused rows stay in the file, with no url: img2dataset reports them failed without any
    request, and every chunk's shards then cover a fixed range of rows — the numbering never
    depends on what the URL policy (or DNS) said, so a re-vetted part cannot shift the
    shards of the parts after it.
    """
    name = f"{number:05d}"
    report_path = out_dir / "parts" / f"{name}.json"
    source = _source_of(path)
    if report_path.exists():
        done = json.loads(report_path.read_text())
        if done["source"] == source:
            return done  # resumed: this part was vetted from this very file
    for old in (out_dir / "vetted").glob(f"{name}-*.parquet"):
        old.unlink()  # the part changed since it was vetted: its chunks are written anew
    resolve = cached_resolver()
    refused, chunks, schema = [], [], None
    for chunk in iter_chunks(path, config.url_col, config.caption_col):
        if columns is not None and list(chunk.columns) != columns:
            raise UrlListError(f"{path}: columns {list(chunk.columns)} differ from the first part's {columns}")
        columns = list(chunk.columns)
        chunk = _with_identity(chunk, part=number)
        if schema is None:  # the schema of the whole first chunk (the types of its columns)
            schema = pa.Schema.from_pandas(chunk, preserve_index=False)
        _, rejected = vet_rows(chunk, policy, resolve)
        refused.append(rejected)
        chunk.loc[chunk["row"].isin(rejected["row"]), "url"] = ""
        _write_table(out_dir / "vetted" / _chunk_name(number, len(chunks)),
                     pa.Table.from_pandas(chunk, schema=schema, preserve_index=False))
        chunks.append(len(chunk))
    refused_frame = pd.concat(refused, ignore_index=True)
    refused_frame.insert(0, "part", number)
    _write_table(out_dir / "parts" / f"{name}.refused.parquet",
                 pa.Table.from_pandas(refused_frame.astype({"part": "int32", "row": "int64"}), schema=INGEST_REJECTED_SCHEMA,
                                      preserve_index=False))
    report = {"part": number, "source": source, "columns": columns, "rows_in": sum(chunks), "chunks": chunks,
              "refused": len(refused_frame)}
    write_json_atomic(report_path, report)
    return report


def _run_img2dataset(vetted_dir: Path, shards: Path, extra_columns: list[str], config: IngestConfig,
                     shard_offset: int = 0) -> None:
    from img2dataset import download

    kwargs = dict(
        url_list=str(vetted_dir),
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        save_additional_columns=["part", "row", *extra_columns],
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
    with strict_resizing(config.max_pixels), guarded_downloading(config.fetch_policy(), shard_offset):
        if config.distributor == "pyspark":
            from infra.spark.session import spark_session

            master = config.spark_master or f"local[{config.processes}]"
            with spark_session(master, app_name="litflow-ingest", driver_host=config.spark_driver_host):
                download(**kwargs)
        else:
            download(**kwargs)


def _check_shard(outcome_file: Path, outcomes: pd.DataFrame, expected: pd.DataFrame) -> None:
    if outcomes["row"].duplicated().any() or set(outcomes["row"]) != set(expected["row"]):
        raise AccountingError(f"{outcome_file}: does not hold the rows it was given, once each")


def account_part(report: dict, first_shard: int, out_dir: Path, samples_per_shard: int,
                 hosts: HostTally | None = None, rounds: list[Round] = ()) -> tuple[dict, pd.DataFrame]:
    """Part counts and rejections from its refusals, its shards' outcomes (one shard at a
    time) and the retry rounds; raise if a row is lost, doubled or in the wrong shard.
    ``hosts`` tallies each row's outcome by host. A row is counted by its latest attempt."""
    number = report["part"]
    retried = [set(r.rows_of(out_dir, number)["row"]) for r in rounds]  # per round: this part's rows
    superseded = set().union(*retried) if retried else set()
    refused = pd.read_parquet(out_dir / "parts" / f"{number:05d}.refused.parquet")
    refused_rows = set(refused["row"])
    rejected, downloaded, shard, names = [refused], 0, first_shard, []
    for c, rows in enumerate(report["chunks"]):
        chunk = pq.read_table(out_dir / "vetted" / _chunk_name(number, c), columns=["row", "url"]).to_pandas()
        for k in range(shards_of(rows, samples_per_shard)):
            expected = chunk.iloc[k * samples_per_shard:(k + 1) * samples_per_shard]
            expected = expected[~expected["row"].isin(refused_rows)]
            stem = f"{shard:05d}"
            shard += 1
            outcome_file = out_dir / "shards" / f"{stem}.parquet"
            if not outcome_file.exists():
                rejected.append(never_completed(expected[~expected["row"].isin(superseded)]))
                continue
            if (out_dir / "shards" / f"{stem}.tar").exists():
                names.append(f"{stem}.tar")
            outcomes = pd.read_parquet(outcome_file, columns=OUTCOME_COLUMNS)
            mine = outcomes[~outcomes["row"].isin(refused_rows)]
            if outcomes["row"].duplicated().any() or set(mine["row"]) != set(expected["row"]):
                raise AccountingError(f"{outcome_file}: does not hold part {number}'s rows of chunk {c}, "
                                      f"shard {k}, once each")
            if (outcomes["row"].isin(refused_rows) & (outcomes["status"] == "success")).any():
                raise AccountingError(f"{outcome_file}: a row refused by the URL policy was downloaded")
            got, failed = settle(mine[~mine["row"].isin(superseded)], hosts)  # a retried row: its round counts it
            downloaded += got
            rejected.append(failed)
    tallies = []
    for i, planned in enumerate(rounds):
        later = set().union(*retried[i + 1:]) if retried[i + 1:] else set()
        got, failures, tally = account_round_part(planned, number, out_dir, later, hosts, _check_shard)
        downloaded += got
        rejected.append(failures)
        tallies.append(tally)
    frame = pd.concat(rejected, ignore_index=True)
    if hosts is not None:
        for url, reason in zip(frame["url"], frame["reason"]):
            hosts.add(url, reason)
        hosts.prune()
    frame["part"] = number
    frame = frame.astype({"part": "int32", "row": "int64"}).sort_values("row").reset_index(drop=True)[INGEST_REJECTED_FIELDS]
    counts = {"part": number, "file": report["source"]["file"], "rows_in": report["rows_in"], "downloaded": downloaded,
              "failed": {k: int(v) for k, v in sorted(frame["reason"].value_counts().items())}, "shards": names}
    if rounds:
        counts["retries"] = tallies  # per round: this part's rows tried, recovered, failed again by reason
    IngestPart.model_validate(counts)  # the contract's check: rows_in = downloaded + failed, else AccountingError
    return counts, frame


def _account(out_dir: Path, reports: list[dict], rounds: list[Round], samples_per_shard: int):
    """Every part accounted (first pass and retry rounds); writes rejected.parquet and returns
    (totals, per-part counts, host tally). Raises AccountingError when a row is lost or doubled."""
    totals = {"rows_in": 0, "downloaded": 0, "failed": {}}
    part_counts, first_shard, hosts = [], 0, HostTally()
    with replacing(out_dir / "rejected.parquet") as tmp, pq.ParquetWriter(tmp, INGEST_REJECTED_SCHEMA) as writer:
        for report in reports:
            counts, rejected = account_part(report, first_shard, out_dir, samples_per_shard, hosts, rounds)
            first_shard += sum(shards_of(rows, samples_per_shard) for rows in report["chunks"])
            writer.write_table(pa.Table.from_pandas(rejected, schema=INGEST_REJECTED_SCHEMA, preserve_index=False))
            part_counts.append(counts)
            totals["rows_in"] += counts["rows_in"]
            totals["downloaded"] += counts["downloaded"]
            for reason, n in counts["failed"].items():
                totals["failed"][reason] = totals["failed"].get(reason, 0) + n
    totals["failed"] = dict(sorted(totals["failed"].items()))  # sums of checked parts; IngestReport checks them again
    return totals, part_counts, hosts


def ingest(url_list: str | Path, out_dir: str | Path, config: IngestConfig | None = None,
           retry_failed: bool = False) -> dict:
    """Download and resize a URL list (a file, a folder or a glob of parts) into raw webdataset
    shards; return the stage report. ``retry_failed``: then run one retry round over the rows
    whose latest failure is transient (:mod:`curation.retry_rounds`)."""
    config = config or IngestConfig()
    out_dir = Path(out_dir)
    started = time.perf_counter()
    parts = list_parts(url_list)
    for path in parts:  # the usual problems (format, header, columns, empty) fail before anything is written
        next(iter_chunks(path, config.url_col, config.caption_col, chunk_rows=64))
    fetch_policy = config.fetch_policy()
    policy = fetch_policy.url_policy
    for folder in ("vetted", "parts", "shards"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    reports, columns = [], None
    for number, path in enumerate(parts):
        report = vet_part(number, path, out_dir, policy, config, columns)
        columns = report["columns"]
        reports.append(report)
    # chunks left over from an earlier run over another list would be read by img2dataset
    expected = {_chunk_name(r["part"], c) for r in reports for c in range(len(r["chunks"]))}
    stale = sorted({p.name for p in (out_dir / "vetted").glob("*.parquet")} - expected)
    if stale:
        raise UrlListError(f"{out_dir}: holds vetted chunks {stale[:3]} that this list does not have: another "
                           "URL list was ingested here; use another output folder")
    extra_columns = [f"src_{c}" if c in RESERVED_COLUMNS else c for c in columns if c not in ("url", "caption")]
    downloader_started = time.perf_counter()
    if sum(r["rows_in"] - r["refused"] for r in reports):
        _run_img2dataset(out_dir / "vetted", out_dir / "shards", extra_columns, config)
    rounds = completed_rounds(out_dir)
    totals, part_counts, hosts = _account(out_dir, reports, rounds, config.samples_per_shard)
    if retry_failed:
        first_pass = sum(shards_of(rows, config.samples_per_shard) for r in reports for rows in r["chunks"])
        planned = plan_round(out_dir, reports, rounds, first_pass, config.samples_per_shard, _chunk_name)
        if planned is not None:
            _run_img2dataset(planned.folder(out_dir) / "list", planned.folder(out_dir) / "shards", extra_columns,
                             config, shard_offset=planned.offset)
            finish_round(out_dir, planned)
            rounds.append(planned)
            totals, part_counts, hosts = _account(out_dir, reports, rounds, config.samples_per_shard)
    downloader_s = time.perf_counter() - downloader_started
    retries = []
    for i, planned in enumerate(rounds):
        tallies = [c["retries"][i] for c in part_counts]
        failed: dict[str, int] = {}
        for tally in tallies:
            for reason, n in tally["failed"].items():
                failed[reason] = failed.get(reason, 0) + n
        names = [f"{planned.offset + k:05d}.tar" for k in range(planned.shard_count())]
        retries.append({"round": planned.number, "rows": sum(t["rows"] for t in tallies),
                        "recovered": sum(t["recovered"] for t in tallies), "failed_again": dict(sorted(failed.items())),
                        "shards": [n for n in names if (out_dir / "shards" / n).exists()]})
    report = IngestReport.parse({
        "stage": "ingest",
        "input": str(Path(url_list).resolve()) if len(parts) == 1 and Path(url_list).is_file() else str(url_list),
        "output": str(out_dir.resolve()),
        **totals,
        "parts": part_counts,
        "shards": [s for counts in part_counts for s in counts["shards"]] + [s for r in retries for s in r["shards"]],
        "retries": retries,
        "hosts": hosts.report(),
        "url_policy": policy.describe(),
        "fetch_policy": fetch_policy.describe(),
        "config": config.model_dump(mode="json"),
        "elapsed_s": round(time.perf_counter() - started, 3),
        "img2dataset_s": round(downloader_s, 3),
        "versions": library_versions(),
        "code_revision": code_revision(),
    }, where=str(out_dir / IngestReport.FILE))
    report.write(out_dir)
    report = report.model_dump(mode="json")
    write_text_atomic(out_dir / "ingest.html", render_ingest_page(report))
    return report
