"""Prefect flow ``build-corpus``: URL list → raw shards → eval index → curated shards (eval
duplicates removed) → de-duplication audit report.

Flows only orchestrate: every step is one call into ``curation`` or ``dedup``, wrapped in a
resumable stage (:mod:`flows.resume`): a re-run after a crash skips the stages whose outputs
are complete and unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from curation.config import CurationConfig, load_config
from curation.curate import curate
from curation.demo import ingest_demo
from curation.ingest import ingest
from curation.ingest_config import IngestConfig
from dedup.modes import EvalMode
from flows.progress import FlowProgress
from flows.resume import Stage
from flows.summaries import corpus_markdown, ingest_markdown
from infra.files import file_sha256
from infra.paths import default_work_dir


def _log(message: str) -> None:
    get_run_logger().info(message)


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_task(run_dir: str, url_list: str | None, config: IngestConfig, demo_per_source: int | None,
                demo_port: int, retry_failed: bool = False) -> dict:
    out = Path(run_dir) / "ingest"
    inputs = {"url_list": url_list, "demo_per_source": demo_per_source, "demo_port": demo_port,
              "config": config.model_dump(mode="json")}
    if retry_failed:  # a changed input: the stage runs again, once, with one retry round
        inputs["retry_failed"] = True
    stage = Stage(Path(run_dir), "ingest", out, inputs, {})

    def work() -> dict:
        if url_list is None:
            report = ingest_demo(out, demo_per_source, config, port=demo_port)
        else:
            report = ingest(url_list, out, config, retry_failed=retry_failed)
        return {k: report[k] for k in ("rows_in", "downloaded", "failed", "output", "hosts", "retries")}

    return stage.run(work, _log)


@task(name="eval-index", cache_policy=NO_CACHE)
def index_task(run_dir: str, eval_sets: list[str] | None, evalset_files: list[str] | None = None,
               keypoints: bool = True, workers: int = 1) -> dict:
    from dedup import evalsets
    from dedup.index import build_index

    out = Path(run_dir) / "evalindex"
    files = [str(Path(f).resolve()) for f in evalset_files or []]
    chosen = evalsets.select(eval_sets or None, files)
    names = [s.name for s in chosen]
    # the files' bytes are part of the stage's inputs: an edited declaration re-runs it
    declared = {f: file_sha256(f) for f in files}
    stage = Stage(Path(run_dir), "eval-index", out,
                  {"eval_sets": names, "evalset_files": declared, "keypoints": keypoints}, {})

    def work() -> dict:
        # content-versioned: an unchanged eval set is not re-hashed even when this stage re-runs
        report = build_index(chosen, out, features=keypoints, workers=workers)
        return {"path": str(report.path), "sets": names,
                "unreadable": {k: len(v) for k, v in report.unreadable.items()}}

    return stage.run(work, _log)


def curation_rules(curation: CurationConfig | None, preset: str | None, config_file: str | None,
                   overrides: list[str]) -> CurationConfig:
    """The rules a run curates with: the whole ``curation`` model (the flow's form) or a preset
    and rules file, then ``overrides``. A form together with a preset or file is refused: which
    one wins would be a guess."""
    if curation is None:
        return load_config(preset, overrides, config_file)
    if preset is not None or config_file is not None:
        raise ValueError("give the curation rules as `curation` (the whole rules) or as `preset` / "
                         "`curation_config` (a rules file), not both")
    config = curation.model_copy(deep=True)  # overrides must not edit the caller's
    for assignment in overrides:
        config.override(assignment)
    return config


@task(name="curate", cache_policy=NO_CACHE)
def curate_task(run_dir: str, config: CurationConfig, workers: int | None, beam_args: list[str], upstream: dict) -> dict:
    out = Path(run_dir) / "curated"
    stage = Stage(Path(run_dir), "curate", out, {"config": config.to_dict(), "beam_args": beam_args}, upstream)

    def work() -> dict:
        manifest = curate(Path(run_dir) / "ingest" / "shards", out, config, workers=workers, beam_args=beam_args)
        return {k: manifest[k] for k in ("inputs", "kept", "rejected", "accounting", "stages", "languages",
                                         "eval_duplicates", "preset")}

    return stage.run(work, _log)


@task(name="dedup-report", cache_policy=NO_CACHE)
def report_task(run_dir: str, corpus_dir: str, index_dir: str, out_dir: str, radius: int, mode: str,
                upstream: dict, embedding_candidates: str | None = None) -> dict:
    """The audit report; ``embedding_candidates`` (an ``eval_candidates.parquet`` of the embedding
    check) joins it, so the pairs training drops for the embedding signal are on the page too."""
    from curation.eval_audit import audit_corpus

    out = Path(out_dir)
    inputs = {"corpus": corpus_dir, "radius": radius, "mode": mode,
              "embedding_candidates": file_sha256(embedding_candidates) if embedding_candidates else None}
    stage = Stage(Path(run_dir), "dedup-report", out, inputs, upstream)

    def work() -> dict:
        import pandas as pd

        embedding = pd.read_parquet(embedding_candidates) if embedding_candidates else None
        return audit_corpus(corpus_dir, index_dir, out, radius=radius, mode=mode, embedding_matches=embedding)

    return stage.run(work, _log)


@flow(name="build-corpus", log_prints=True)
def build_corpus(
    url_list: str | None = None,
    output: str | None = None,
    demo_per_source: int | None = 200,
    demo_port: int = 8765,
    ingest_options: IngestConfig | None = None,
    retry_failed: bool = False,
    preset: str | None = None,
    curation_config: str | None = None,
    curation: CurationConfig | None = None,
    overrides: list[str] | None = None,
    eval_sets: list[str] | None = None,
    evalset_files: list[str] | None = None,
    dedup_mode: EvalMode = "train+test",
    dedup_radius: int = 8,
    eval_keypoints: bool = True,
    curate_workers: int | None = None,
    beam_args: list[str] | None = None,
) -> dict:
    """Build a curated corpus from ``url_list``; without one, from the real demo data served on
    127.0.0.1:``demo_port`` (a fixed port keeps the URLs, and so the outputs, identical across runs).

    ``ingest_options`` are ``litflow ingest``'s options (:class:`curation.ingest_config.IngestConfig`:
    a form in Prefect's UI); the curation rules are either ``curation``
    (:class:`curation.config.CurationConfig`, whole: a form too) or ``curation_config`` (a rules
    file) and ``preset``; ``overrides`` apply over either; ``evalset_files`` eval sets declared in files.
    ``eval_keypoints``: store the eval images' verification keypoints in the index (about 20 ms an
    eval image, once, on ``curate_workers`` processes, default one per core), so that verification
    runs SIFT on corpus images only: worth it whenever the corpus is larger than the eval sets.
    ``curate_workers`` None lets curation choose (one process for a small corpus, else one worker
    process per core: :func:`curation.pipeline.local_run`)."""
    out = Path(output) if output else default_work_dir() / "demo"
    run_dir = str(out)
    progress = FlowProgress(["ingest", "eval-index", "curate", "dedup-report"], key="build-corpus-progress")
    config = ingest_options or IngestConfig()
    rules = curation_rules(curation, preset, curation_config, list(overrides or []))  # fails before any work
    ingested = ingest_task(run_dir, url_list, config, demo_per_source, demo_port, retry_failed)
    progress.advance("ingest")
    create_markdown_artifact(markdown=ingest_markdown(ingested), key="build-corpus-ingest", description="ingestion")

    index = index_task(run_dir, eval_sets, evalset_files, eval_keypoints, curate_workers or os.cpu_count() or 1)
    progress.advance("eval-index")
    for assignment in (f'eval_dedup.index="{index["path"]}"', f'eval_dedup.mode="{dedup_mode}"',
                       f"eval_dedup.radius={dedup_radius}"):
        rules.override(assignment)
    manifest = curate_task(run_dir, rules, curate_workers, list(beam_args or []),
                           {"ingest": ingested["digest"], "eval-index": index["digest"]})
    progress.advance("curate")
    # the audit looks at the corpus *before* removal (the raw shards), so it shows every match
    report = report_task(run_dir, str(out / "ingest" / "shards"), index["path"], str(out / "dedup-report"),
                         dedup_radius, dedup_mode, {"ingest": ingested["digest"], "eval-index": index["digest"]})
    progress.advance("dedup-report")
    create_markdown_artifact(markdown=corpus_markdown(manifest, report), key="build-corpus-summary",
                             description="curation and de-duplication")
    html = (out / "dedup-report" / "report.html").resolve()
    create_link_artifact(key="build-corpus-dedup-report", link=html.as_uri(), link_text="de-duplication audit report")
    get_run_logger().info("corpus at %s: %d of %d pairs kept", out / "curated", manifest["kept"], manifest["inputs"])
    return {
        "output": str(out),
        "curated": str(out / "curated"),
        "report_html": str(html),
        "ingest": {k: ingested[k] for k in ("rows_in", "downloaded", "failed")},
        "curation": {k: manifest[k] for k in ("inputs", "kept", "rejected")},
        "skipped": [name for name, r in (("ingest", ingested), ("eval-index", index), ("curate", manifest),
                                         ("dedup-report", report)) if r.get("skipped")],
    }
