"""Prefect flow ``build-corpus``: URL list → raw shards (ingestion; later stages join here).

Flows only orchestrate: every step is a call into the ``curation`` library.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from curation.demo import ingest_demo
from curation.ingest import IngestConfig, ingest
from curation.paths import default_work_dir


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_task(url_list: str | None, out_dir: str, config: IngestConfig, demo_per_source: int | None) -> dict:
    if url_list is None:
        return ingest_demo(out_dir, demo_per_source, config)
    return ingest(url_list, out_dir, config)


def _summary(report: dict) -> str:
    rows = "\n".join(f"| {reason} | {count} |" for reason, count in report["failed"].items())
    return (
        f"## Ingestion\n\nrows in: **{report['rows_in']}**, downloaded: **{report['downloaded']}**, "
        f"failed: **{sum(report['failed'].values())}**\n\n| reason | rows |\n|---|---|\n{rows}\n\n"
        f"output: `{report['output']}`\n"
    )


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
) -> dict:
    """Build a corpus from ``url_list``; without one, from the real demo data served on loopback."""
    out_dir = Path(output) if output else default_work_dir() / "demo"
    config = IngestConfig(
        distributor=distributor,
        spark_master=spark_master,
        samples_per_shard=samples_per_shard,
        image_size=image_size,
        allow=tuple(allow or ()),
        **({"processes": processes} if processes else {}),
    )
    report = ingest_task(url_list, str(out_dir / "ingest"), config, demo_per_source)
    create_markdown_artifact(markdown=_summary(report), key="build-corpus-ingest", description="ingestion counts")
    get_run_logger().info("corpus at %s: %d of %d rows downloaded", out_dir, report["downloaded"], report["rows_in"])
    return {"output": str(out_dir), "ingest": {k: report[k] for k in ("rows_in", "downloaded", "failed")}}
