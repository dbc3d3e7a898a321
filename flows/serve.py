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
            description="Ingest the real demo data (openclipart + emoji) served on 127.0.0.1.",
            parameters={"demo_per_source": 200},
            tags=["litflow", "demo"],
        ),
    ]


def serve_all() -> None:
    serve(*deployments(), limit=MAX_CONCURRENT_RUNS)
