"""Prefect flow ``dedup-report``: audit an existing corpus against the registered evaluation
sets, without changing it (an auditor's run: index the eval sets, match, write the report)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from infra.paths import default_work_dir
from flows.build_corpus import index_task, report_task
from flows.progress import FlowProgress


def _markdown(report: dict) -> str:
    lines = ["## De-duplication audit", "", f"radius {report.get('radius')}, mode {report.get('mode')}", "",
             "| eval set | split | eval images | corpus pairs matched | removed under mode |", "|---|---|---|---|---|"]
    for set_name, splits in (report.get("eval_sets") or {}).items():
        for split, s in splits.items():
            lines.append(f"| {set_name} | {split} | {s.get('eval_images')} | {s.get('corpus_pairs_matched')} | {s.get('removed')} |")
    return "\n".join(lines) + "\n"


@flow(name="dedup-report", log_prints=True)
def dedup_report(corpus: str | None = None, output: str | None = None, eval_sets: list[str] | None = None,
                 evalset_files: list[str] | None = None, radius: int = 8, mode: str = "train+test",
                 embedding_candidates: str | None = None, eval_keypoints: bool = True) -> dict:
    """Match ``corpus`` (webdataset shards, curated or raw) against the eval sets; write the audit.

    ``embedding_candidates``: the embedding check's ``eval_candidates.parquet`` (``litflow dedup
    flag``, or the nightly retrain's eval check), joined into the report with its verdicts, so
    the report lists every removal: curation's pHash ones and the ones training drops.
    ``eval_keypoints``: as build-corpus's (store the eval images' verification keypoints)."""
    corpus_dir = Path(corpus) if corpus else default_work_dir() / "demo" / "ingest" / "shards"
    if not corpus_dir.exists():
        raise FileNotFoundError(f"corpus {corpus_dir} does not exist (run build-corpus first, or pass corpus=...)")
    out = Path(output) if output else default_work_dir() / "audit"
    progress = FlowProgress(["eval-index", "dedup-report"], key="dedup-report-progress")
    index = index_task(str(out), eval_sets, evalset_files, eval_keypoints)
    progress.advance("eval-index")
    report = report_task(str(out), str(corpus_dir), index["path"], str(out / "report"), radius, mode,
                         {"eval-index": index["digest"], "corpus": str(corpus_dir)}, embedding_candidates)
    progress.advance("dedup-report")
    create_markdown_artifact(markdown=_markdown(report), key="dedup-report-summary", description="audit summary")
    html = (out / "report" / "report.html").resolve()
    create_link_artifact(key="dedup-report-html", link=html.as_uri(), link_text="audit report")
    get_run_logger().info("audit report: %s", html)
    return {"report_html": str(html), "report_json": str(out / "report" / "report.json")}
