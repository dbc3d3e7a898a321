"""One serve process registers every litflow deployment (``litflow serve``).

* ``build-corpus/demo`` — the real demo data, end to end (ingest → eval index → curate → audit);
* ``retrain-lit/nightly`` — cron 03:00 UTC: retrain on the newest corpus, publish when not worse;
* ``dedup-report/audit`` — audit the demo corpus against the registered evaluation sets.

``--interval NAME=SECONDS`` replaces a deployment's schedule with a short interval (tests, demos).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from prefect import serve

from flows.build_corpus import build_corpus
from flows.dedup_report import dedup_report
from flows.retrain import retrain_lit

# SQLite (Prefect's default database) fails past ~16 concurrent runs: stay well below
MAX_CONCURRENT_RUNS = 4
NIGHTLY_CRON = "0 3 * * *"

DEMO_CURATION = Path(__file__).with_name("demo_curation.toml")  # lit-relaxed, min_side 48
# The demo corpus (a few thousand pairs) is smaller than its eval sets (12k images, MNIST's 10k
# among them): storing the eval images' keypoints (~20 ms each) would cost more than it saves.
DEMO_CORPUS = {"demo_per_source": 200, "curation_config": str(DEMO_CURATION), "eval_keypoints": False}
DEMO_AUDIT = {"eval_keypoints": False}


def deployments(intervals: dict[str, float] | None = None) -> list:
    intervals = intervals or {}

    def schedule(name: str, cron: str | None = None) -> dict:
        if name in intervals:
            return {"interval": timedelta(seconds=intervals[name])}
        return {"cron": cron} if cron else {}

    return [
        build_corpus.to_deployment(
            name="demo", parameters=DEMO_CORPUS, tags=["litflow", "demo"], **schedule("build-corpus/demo"),
            description="Real demo data (openclipart + emoji on 127.0.0.1): ingest, eval index (MNIST, emoji), "
            "curate (lit-relaxed) with eval de-duplication, audit report.",
        ),
        retrain_lit.to_deployment(
            name="nightly", tags=["litflow"], **schedule("retrain-lit/nightly", NIGHTLY_CRON),
            description="Embed the newest curated corpus, train the text tower (LU), evaluate zero-shot, "
            "publish as latest when not worse than the current latest.",
        ),
        dedup_report.to_deployment(
            name="audit", parameters=DEMO_AUDIT, tags=["litflow"], **schedule("dedup-report/audit"),
            description="Audit a corpus against every registered evaluation set, without changing it.",
        ),
    ]


def serve_all(intervals: dict[str, float] | None = None) -> None:
    serve(*deployments(intervals), limit=MAX_CONCURRENT_RUNS)
