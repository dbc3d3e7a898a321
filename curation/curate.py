"""``litflow curate``: run the Beam pipeline, then write and check the manifest."""

from __future__ import annotations

import time
from pathlib import Path

from curation.config import CurationConfig
from curation.manifest import build_manifest, write_json_atomic
from curation.pipeline import run_pipeline


def curate(raw_dir: str | Path, out_dir: str | Path, config: CurationConfig, workers: int = 2,
           beam_args: list[str] | None = None) -> dict:
    """Curate the raw shards in ``raw_dir`` (an ingest output's ``shards/``) into ``out_dir``."""
    raw_dir, out_dir = Path(raw_dir).resolve(), Path(out_dir).resolve()
    if config.eval_dedup.index and config.eval_dedup.mode != "none":
        # fail before the run, not inside a worker: missing index, wrong hash settings
        from dedup.index import EvalIndex
        from dedup.phash import DEFAULT_SETTINGS

        EvalIndex.load(config.eval_dedup.index, config.eval_dedup.mode).check_settings(DEFAULT_SETTINGS)
    started = time.perf_counter()
    run_pipeline(raw_dir, out_dir, config, workers, beam_args)
    pipeline_s = time.perf_counter() - started
    manifest = build_manifest(raw_dir, out_dir, config)
    write_json_atomic(manifest, out_dir / "corpus.json")
    write_json_atomic({"pipeline_s": round(pipeline_s, 3), "workers": workers,
                       "records_per_s": round(manifest["inputs"] / pipeline_s, 2)}, out_dir / "timing.json")
    return manifest
