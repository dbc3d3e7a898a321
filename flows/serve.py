"""One serve process registers every litflow deployment (``litflow serve``)."""

from __future__ import annotations

from prefect import serve

from flows.build_corpus import build_corpus

# SQLite (Prefect's default database) fails past ~16 concurrent runs: stay well below
MAX_CONCURRENT_RUNS = 4


def deployments() -> list:
    return [
        build_corpus.to_deployment(
            name="demo",
            description="The real demo data (openclipart + emoji, served on 127.0.0.1): ingest, index the "
            "eval sets (MNIST, emoji), curate with lit-relaxed and eval de-duplication, audit report.",
            # the demo's clip-art and 64-px emoji are small by nature: ALIGN's 200-px rule would
            # leave almost nothing to train on, so the demo lowers it (recorded in corpus.json)
            parameters={"demo_per_source": 200, "preset": "lit-relaxed", "overrides": ["image.min_side=48"]},
            tags=["litflow", "demo"],
        ),
    ]


def serve_all() -> None:
    serve(*deployments(), limit=MAX_CONCURRENT_RUNS)
