"""Prefect flow ``build-corpus``: URL list → raw shards → eval index → curated shards (eval
duplicates removed) → de-duplication audit report.

Flows only orchestrate: every step is one call into ``curation`` or ``dedup``.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from curation.config import load_config
from curation.curate import curate
from curation.demo import ingest_demo
from curation.ingest import IngestConfig, ingest
from curation.paths import default_work_dir
from flows.summaries import corpus_markdown, ingest_markdown


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_task(url_list: str | None, out_dir: str, config: IngestConfig, demo_per_source: int | None) -> dict:
    if url_list is None:
        return ingest_demo(out_dir, demo_per_source, config)
    return ingest(url_list, out_dir, config)


@task(name="eval-index", cache_policy=NO_CACHE)
def index_task(eval_sets: list[str] | None, out_dir: str) -> dict:
    from dedup import evalsets
    from dedup.index import build_index

    report = build_index([evalsets.get(n) for n in (eval_sets or evalsets.names())], out_dir)
    return {"path": str(report.path), "reindexed": report.reindexed, "reused": report.reused,
            "unreadable": {k: len(v) for k, v in report.unreadable.items()}}


@task(name="curate", cache_policy=NO_CACHE)
def curate_task(raw_dir: str, out_dir: str, preset: str, overrides: list[str], workers: int,
                beam_args: list[str]) -> dict:
    return curate(raw_dir, out_dir, load_config(preset, overrides), workers=workers, beam_args=beam_args)


@task(name="dedup-report", cache_policy=NO_CACHE)
def report_task(corpus_dir: str, index_dir: str, out_dir: str, radius: int, mode: str) -> dict:
    from dedup.report import build_report

    return build_report(corpus_dir, index_dir, out_dir, radius=radius, mode=mode)


@flow(name="build-corpus", log_prints=True)
def build_corpus(
    url_list: str | None = None,
    output: str | None = None,
    demo_per_source: int | None = 200,
    distributor: str = "multiprocessing",
    spark_master: str | None = None,
    processes: int | None = None,
    samples_per_shard: int = 1000,
    image_size: int = 256,
    allow: list[str] | None = None,
    preset: str = "align",
    overrides: list[str] | None = None,
    eval_sets: list[str] | None = None,
    dedup_mode: str = "train+test",
    dedup_radius: int = 8,
    curate_workers: int = 2,
    beam_args: list[str] | None = None,
) -> dict:
    """Build a curated corpus from ``url_list``; without one, from the real demo data served on loopback."""
    logger = get_run_logger()
    out = Path(output) if output else default_work_dir() / "demo"
    config = IngestConfig(
        distributor=distributor, spark_master=spark_master, samples_per_shard=samples_per_shard,
        image_size=image_size, allow=tuple(allow or ()), **({"processes": processes} if processes else {}),
    )
    ingested = ingest_task(url_list, str(out / "ingest"), config, demo_per_source)
    create_markdown_artifact(markdown=ingest_markdown(ingested), key="build-corpus-ingest", description="ingestion")

    index = index_task(eval_sets, str(out / "evalindex"))
    rules = [*(overrides or []), f'eval_dedup.index="{index["path"]}"', f'eval_dedup.mode="{dedup_mode}"',
             f"eval_dedup.radius={dedup_radius}"]
    manifest = curate_task(str(out / "ingest" / "shards"), str(out / "curated"), preset, rules,
                           curate_workers, list(beam_args or []))
    # the audit looks at the corpus *before* removal (the raw shards), so it shows every match
    report = report_task(str(out / "ingest" / "shards"), index["path"], str(out / "dedup-report"),
                         dedup_radius, dedup_mode)
    create_markdown_artifact(markdown=corpus_markdown(manifest, report), key="build-corpus-summary",
                             description="curation and de-duplication")
    html = (out / "dedup-report" / "report.html").resolve()
    create_link_artifact(key="build-corpus-dedup-report", link=html.as_uri(), link_text="de-duplication audit report")
    logger.info("corpus at %s: %d of %d pairs kept", out / "curated", manifest["kept"], manifest["inputs"])
    return {
        "output": str(out),
        "curated": str(out / "curated"),
        "report_html": str(html),
        "ingest": {k: ingested[k] for k in ("rows_in", "downloaded", "failed")},
        "curation": {k: manifest[k] for k in ("inputs", "kept", "rejected")},
    }
