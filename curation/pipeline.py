"""The curation pipeline on Apache Beam: raw shards → curated shards + rejections + counts.

No image bytes and no caption travel through a shuffle, and nothing that grows with the
corpus is gathered on one worker. Graph (every arrow a Beam transform)::

    raw shard paths ─► examine each shard (decode, hash, normalise; facts file) ─► facts
    facts ─► corpus-wide rules (curation.corpus_rules: keyed combines and joins) ─► findings
    (shard, path) ⋈ findings by shard ─► decide each shard (rules, language, eval index)
      ├─ corpus_dedup none:  write each shard (curated tar + parquet, rejections, counts)
      └─ exact | near: kept (key, hashes) ─► curation.corpus_dedup ─► drops
                       (shard, path) ⋈ drops by shard ─► write each shard

Per raw shard the work is in :mod:`curation.shard_passes` (what each pass holds is said
there: one shard's facts, bounded by the raw shard size). The corpus-wide steps and their
memory bounds are in :mod:`curation.corpus_rules` and :mod:`curation.corpus_dedup`. The only
side inputs are scalars (the count of valid pairs, the rare-token K and df threshold).

Outputs, one set per raw shard ``STEM`` (no global sort: shards are independent, and two
runs on the same input and config give the same bytes):

    OUT/shards/STEM.tar + .parquet      kept pairs of raw shard STEM, in key order; split into
                                         STEM_00, STEM_01, … when more than output.shard_size
    OUT/rejected/STEM.parquet           every rejected record of STEM with reason and detail
    OUT/_counts/STEM.json               counts by reason, language, eval split, duplicate kind
    OUT/_work/                          facts, decided records and corpus statistics (valid
                                         pairs, rare-token K and df threshold), removed after the run

:mod:`curation.manifest` then sums the counts into ``corpus.json`` and checks them against
the written files (``inputs = kept + Σ rejected[reason]``, per shard and in total).

All reads and writes go through Beam's ``FileSystems`` (:mod:`curation.storage`), so raw and
output folders may be on ``gs://``, ``s3://`` or any file system Beam has. Runs on the
DirectRunner's FnApiRunner by default (no network: the plain DirectRunner would first try to
download the Prism runner): in one process for a small corpus, else in multi-processing mode
(:func:`local_run` says when); any other runner is chosen with standard pipeline options
(``--runner=DataflowRunner ...``, see the README).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from curation import storage
from curation.config import CurationConfig
from curation.corpus_dedup import ExactDuplicates, NearDuplicates, wire_phash
from curation.corpus_rules import CorpusRules
from curation.eval_match import EvalMatcher
from curation.shard_passes import (COUNTS_DIR, WORK_DIR, Finding, apply_drops, decide_shard, examine_shard,
                                   load_decided, save_decided, write_shard_outputs)
from infra.contract import KEPT


def _facts(shard_path, out_dir: str, config: CurationConfig):
    shard, path = shard_path
    return examine_shard(shard, path, out_dir, config)


class DecideShards(beam.DoFn):
    """Pass 2 of each raw shard; with ``write`` also pass 3 (no corpus de-duplication), else
    the decided records are saved and the kept pairs' hashes emitted for the duplicate join."""

    def __init__(self, out_dir: str, config: CurationConfig, write: bool):
        self.out_dir, self.config, self.write = out_dir, config, write
        self.matcher = None

    def setup(self):
        if EvalMatcher.wanted(self.config.eval_dedup):
            self.matcher = EvalMatcher(self.config.eval_dedup)

    def process(self, shard_joined, stats):
        shard, joined = shard_joined
        (path,) = joined["path"]
        findings = [Finding(*f) for f in joined["findings"]]
        decided = decide_shard(path, self.out_dir, findings, stats["rare_tokens_k"], self.config, self.matcher)
        if self.write:
            write_shard_outputs(path, self.out_dir, decided, self.config)
            return
        save_decided(path, self.out_dir, decided)
        for r in decided:
            if r["status"] == KEPT:
                yield r["key"], shard, r["index"], r["sha256"], wire_phash(r["phash"])


def _write_after_drops(shard_joined, out_dir: str, config: CurationConfig):
    _, joined = shard_joined
    (path,) = joined["path"]
    decided = apply_drops(load_decided(path, out_dir), joined["drops"])
    write_shard_outputs(path, out_dir, decided, config)


_M_ARENA_MAX = -8  # glibc's malloc.h


def _fewer_malloc_arenas() -> None:
    """Two glibc malloc arenas per process instead of up to 8 per core, in this process and
    the runner's worker processes (they inherit the environment).

    Why: the local runner moves every bundle through gRPC threads, and glibc gives each
    allocating thread its own arena; memory freed there is rarely returned, so each process's
    RSS kept the high-water mark of every arena (measured: 1.47 against 2.0 KB a pair of
    growth from 64k to 256k pairs with ALIGN's rules, bench/bench_scale.py). Python's own
    objects were a small part of it (tracemalloc: ~110 MB of the controller's 770 MB). A
    value the user set is kept; elsewhere than glibc this does nothing.
    """
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, int(os.environ["MALLOC_ARENA_MAX"]))
    except (OSError, AttributeError, ValueError):
        pass


IN_PROCESS_MAX_BYTES = 32 * 2**20
"""Raw shards totalling at most this many bytes are curated in one process when the worker
count is left to the pipeline. Why: the multi-processing runner costs about 3 s to start its
worker processes (each loads Beam and the compiled language loop) and then moves every bundle
over gRPC. Measured on 2 cores (``bench/bench_scale.py --runner-crossover``), one process is
faster up to between 32 and 65 MiB of raw shards (8k–16k of the 64-px benchmark pairs), 1.4×
at 8 MiB; more cores make the worker processes win earlier, so the bound is the low end. The
outputs are the same bytes either way. Memory: in one process the runner keeps the
collections between stages in that process, as the controller does in multi-processing mode
(facts, findings, paths: no image bytes), so the bound also bounds what it holds."""


class LocalRun(NamedTuple):
    """How the local FnApiRunner runs: ``in_memory`` (one process) or ``multi_processing``."""

    mode: str
    workers: int

    def describe(self) -> str:
        if self.mode == "in_memory":
            return "in one process"
        return f"{self.workers} worker process{'es' if self.workers > 1 else ''}"


def local_run(raw_bytes: int | None, raw_shards: int, workers: int | None, cores: int | None = None) -> LocalRun:
    """The local runner for a corpus of ``raw_shards`` files and ``raw_bytes`` bytes (None:
    unknown, taken as large).

    ``workers`` given: that many worker processes, as asked. ``None`` (the default): one
    process when the raw shards total at most :data:`IN_PROCESS_MAX_BYTES` or when only one
    worker could have work (work is spread by raw shard, so more workers than raw shards sit
    idle); otherwise one worker process per core, at most one per raw shard.
    """
    if workers is not None:
        return LocalRun("multi_processing", workers)
    useful = max(1, min(cores or os.cpu_count() or 1, raw_shards))
    if useful == 1 or (raw_bytes is not None and raw_bytes <= IN_PROCESS_MAX_BYTES):
        return LocalRun("in_memory", 1)
    return LocalRun("multi_processing", useful)


def pipeline_options(run: LocalRun, beam_args: list[str] | None = None) -> tuple[PipelineOptions, object]:
    """(options, runner): the local FnApiRunner as ``run`` says, unless ``--runner`` is in
    beam_args, whose other options come last (they win)."""
    beam_args = list(beam_args or [])
    if any(a.startswith("--runner") for a in beam_args):
        return PipelineOptions(beam_args), None
    _fewer_malloc_arenas()
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    options = PipelineOptions(
        [f"--direct_num_workers={run.workers}", f"--direct_running_mode={run.mode}",
         "--default_sdk_harness_log_level=WARNING"] + beam_args
    )
    return options, FnApiRunner()


def build(p: beam.Pipeline, raw_shards: list[str], out_dir: str, config: CurationConfig) -> None:
    """Add the curation transforms to pipeline ``p``; ``raw_shards`` in run order."""
    numbered = list(enumerate(raw_shards))
    shards = p | "Raw shards" >> beam.Create(numbered) | "Spread shards" >> beam.Reshuffle()
    facts = shards | "Examine" >> beam.Map(_facts, out_dir, config)  # one list of facts per raw shard
    paths = p | "Shard paths" >> beam.Create(numbered)
    corpus = facts | "Corpus rules" >> CorpusRules(config, paths, out_dir, len(raw_shards))
    stats = corpus["stats"]
    _ = stats | "Write stats" >> beam.Map(lambda s: storage.write_json(storage.join(out_dir, WORK_DIR, "stats.json"), s))

    remove = config.corpus_dedup.remove
    decided = (
        {"path": paths, "findings": corpus["findings"]}
        | "Findings to shards" >> beam.CoGroupByKey()
        | "Decide" >> beam.ParDo(DecideShards(out_dir, config, write=remove == "none"), beam.pvalue.AsSingleton(stats))
    )
    if remove == "none":
        return
    if remove == "exact":
        drops = decided | "Exact duplicates" >> ExactDuplicates()
    else:
        drops = decided | "Near duplicates" >> NearDuplicates(config.corpus_dedup.radius, config.corpus_dedup.rounds)
    _ = (
        {"path": paths, "drops": drops}
        | "Drops to shards" >> beam.CoGroupByKey()
        | "Write" >> beam.Map(_write_after_drops, out_dir, config)
    )


def run_pipeline(raw_dir: str | Path, out_dir: str | Path, config: CurationConfig, workers: int | None = None,
                 beam_args: list[str] | None = None) -> tuple[list[str], LocalRun | None]:
    """Run the pipeline to completion; (the raw shards (``*.tar``, name order) it curated, the
    local run it made: None on a runner given by ``--runner``). ``workers`` None lets
    :func:`local_run` choose. ``out_dir`` is emptied first: a run owns its folder."""
    raw_dir, out_dir = _location(raw_dir), _location(out_dir)
    FileSystems.set_options(PipelineOptions(beam_args or []))  # this process lists, and writes the manifest
    sized = storage.list_sized(raw_dir, "*.tar")
    if not sized:
        raise FileNotFoundError(f"{raw_dir}: no raw shards (*.tar) to curate")
    raw_shards = [path for path, _ in sized]
    sizes = [size for _, size in sized]
    run = local_run(None if None in sizes else sum(sizes), len(sized), workers)
    options, runner = pipeline_options(run, beam_args)
    storage.delete_tree(out_dir)
    for folder in ("shards", "rejected", COUNTS_DIR, WORK_DIR):
        storage.mkdirs(storage.join(out_dir, folder))
    with beam.Pipeline(runner=runner, options=options) as p:
        build(p, raw_shards, out_dir, config)
    return raw_shards, run if runner is not None else None


def _location(path: str | Path) -> str:
    """A local path made absolute (workers may run elsewhere); a URL (``gs://…``) as given."""
    text = str(path)
    return text if "://" in text else str(Path(text).resolve())
