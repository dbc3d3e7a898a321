"""``litflow curate``: run the Beam pipeline, then write and check the manifest."""

from __future__ import annotations

import json
import time
from pathlib import Path

from curation import storage
from curation.config import CurationConfig
from curation.manifest import build_manifest
from curation.pipeline import _location, run_pipeline
from curation.shard_passes import WORK_DIR


def curate(raw_dir: str | Path, out_dir: str | Path, config: CurationConfig, workers: int | None = None,
           beam_args: list[str] | None = None) -> dict:
    """Curate the raw shards in ``raw_dir`` (an ingest output's ``shards/``) into ``out_dir``;
    return ``corpus.json`` (:class:`infra.contract.CorpusManifest`) as written. ``workers``
    None: one process for a small corpus, else one worker process per core
    (:func:`curation.pipeline.local_run`)."""
    raw_dir, out_dir = _location(raw_dir), _location(out_dir)
    if config.eval_dedup.index and config.eval_dedup.mode != "none":
        # fail before the run, not inside a worker: missing index, wrong hash settings
        from dedup.index import EvalIndex
        from dedup.phash import DEFAULT_SETTINGS

        EvalIndex.load(config.eval_dedup.index, config.eval_dedup.mode).check_settings(DEFAULT_SETTINGS)
    started = time.perf_counter()
    raw_shards, run = run_pipeline(raw_dir, out_dir, config, workers, beam_args)
    pipeline_s = time.perf_counter() - started
    manifest = build_manifest(raw_dir, out_dir, config, raw_shards)
    storage.delete_tree(storage.join(out_dir, WORK_DIR))  # the facts: only the run itself needs them
    # corpus.json last: its presence means the run finished and its counts were checked
    storage.write_atomic(storage.join(out_dir, manifest.FILE), manifest.to_json().encode())
    storage.write_atomic(storage.join(out_dir, "timing.json"), _json(
        {"pipeline_s": round(pipeline_s, 3),
         "ran": run.describe() if run else "on the runner given by --beam-arg",
         "local_processes": run.workers if run else None,  # the cores a local run used
         "records_per_s": round(manifest.inputs / pipeline_s, 2)}))
    return manifest.model_dump(mode="json", by_alias=True)


def _json(value: dict) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode()
