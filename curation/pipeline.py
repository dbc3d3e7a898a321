"""The curation pipeline on Apache Beam: raw shards → curated shards + rejections + manifest.

Graph (every arrow a Beam transform; the heavy per-record work is one Map):

    shard paths ─► read samples ─► examine (decode, text, hash) ─► candidates
    candidates ─► duplicate keys (GroupByKey on key) ──────────────────────┐
    valid, first copies ─► alt-texts per image (CombinePerKey) ────────────┤ side inputs
                        ─► images per alt-text (Distinct + Count) ─────────┤ (small)
                        ─► unigram/bigram document frequency → top K ──────┘
    candidates + side inputs ─► decide ─► language (kept) ─► eval index match (kept) ─┐
    [corpus_dedup.remove != none] (key, sha256, pHash) of kept ─► ToList ─► keys to drop ─┤ side input
                                                          drop corpus duplicates (kept) ◄─┘
    kept ─► shard index (sorted keys) ─► write shards
                                      └─► rejected ─► rejected.parquet

Side inputs hold only what is *over* a threshold (or the top-K grams), which stays small
at demo scale; at ALIGN scale (100 M grams) the top-K set would become a CoGroupByKey join.

Optional intra-corpus de-duplication (``corpus_dedup.remove``: ``exact`` = same sha256,
``near`` = pHash within ``corpus_dedup.radius``, see :func:`dedup.intra.duplicates_to_drop`)
runs last, on the pairs every other rule kept: in each duplicate group the first key is kept
and the others are rejected as ``corpus_duplicate`` with the kept key (and the pHash distance)
in ``detail``. It gathers (key, sha256, pHash) of *all* kept pairs on one worker — a few
hundred bytes a pair as Python objects, fine at demo and medium scale; at ALIGN scale it would
need a sharded join (exact: GroupByKey on sha256; near: GroupByKey on pHash substrings as
multi-index hashing does, then union-find over the candidate pairs).

After the run, :mod:`curation.manifest` re-reads the outputs and checks
``inputs = kept + Σ rejected[reason]``; a violation fails the run.

Runs on the DirectRunner's FnApiRunner in multi-processing mode by default (no network:
the plain DirectRunner would first try to download the Prism runner); any other runner
is chosen with standard pipeline options (``--runner=FlinkRunner ...``).
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from curation.checks import CorpusVerdicts, decide, examine, tag_languages
from curation.config import CurationConfig
from curation.records import KEPT, PAIR_SCHEMA, REJECTED, CurationReason
from curation.shards import list_shards, read_shard, write_shard
from dedup.intra import drop_detail, duplicates_to_drop

COUNTS_DIR = "_counts"


def _read(path: str):
    """Yield (shard name, index, raw sample) for every sample of a raw shard.

    A tar that breaks off (truncated, corrupt header) yields what was readable, then one
    sample carrying ``__error__``: it becomes an ``unreadable_shard`` rejection, so the
    broken shard is counted and named instead of crashing the run or vanishing.
    """
    name = Path(path).stem
    index = -1
    try:
        for index, raw in enumerate(read_shard(path)):
            yield name, index, raw
    except (tarfile.TarError, OSError, EOFError, ValueError) as err:
        yield name, index + 1, {"__key__": f"{name}@{index + 1}",
                                "__error__": f"{path}: unreadable after {index + 1} samples: {type(err).__name__}: {err}"}


class MatchEvalSets(beam.DoFn):
    """Reject kept pairs that are near-duplicates of an eval image.

    Candidates are the eval images whose pHash (or mirror pHash) is within the radius; with
    ``verify`` on (the default), each of the nearest ``max_candidates`` is confirmed by
    :mod:`dedup.verify` (local features, a similarity transform, the aligned images compared)
    and the pair is rejected for the first one confirmed, or undecided. pHash alone puts
    distinct clip-art at distance 0, so it only proposes.

    The eval index is loaded once per worker in ``setup`` from its folder rather than shipped
    as a pickled side input: every worker reads the same files, and the search tables are
    built where they are used. Eval images' features are cached per worker.
    """

    def __init__(self, rules):
        self.rules = rules
        self.index = None
        self.verifier = None

    def setup(self):
        if self.rules.index and self.rules.mode != "none":
            from dedup.index import EvalIndex

            self.index = EvalIndex.load(self.rules.index, self.rules.mode)
            if self.rules.verify:
                from dedup.verify import Verifier

                self.verifier = Verifier()

    def _confirmed(self, matches, image_bytes):
        """The nearest match that verification confirms (or cannot decide), with its verdict.

        An image that cannot be read now (corpus or eval) gets no verdict: pHash's stands.
        """
        from dedup.verify import Verifier

        query = Verifier.corpus_features(image_bytes)
        for match in matches[:self.rules.max_candidates]:
            verdict = self.verifier.try_check(query, self.index.refs[match.image], match.distance)
            if verdict is None:
                return match, None
            if Verifier.decide(verdict):
                return match, verdict
        return None, None

    def process(self, item):
        record, image = item
        if self.index is not None and record["status"] == KEPT and record["phash"] is not None:
            matches = self.index.match(record["phash"], self.rules.radius)
            verdict = None
            if matches and self.verifier is not None:
                best, verdict = self._confirmed(matches, image)
                matches = [best] if best is not None else []
            if matches:
                from dedup.index import eval_duplicate_fields

                best = min(matches)
                record = {**record, **eval_duplicate_fields(matches), "status": REJECTED,
                          "reason": CurationReason.EVAL_DUPLICATE.value,
                          "detail": f"{best.signal} distance {best.distance} to {best.eval_set}/{best.split}/{best.eval_key}"
                                    + (f" (+{len(matches) - 1} more)" if len(matches) > 1 else "")
                                    + (f"; {verdict.summary()}" if verdict is not None else "")}
        yield record, image


def _kept_hashes(item):
    record, _ = item
    if record["status"] == KEPT:
        yield record["key"], record["sha256"], record["phash"]


def _drop_corpus_duplicate(item, drops: dict):
    """Reject a kept pair named in ``drops`` ({key: (kept key, distance, kind)})."""
    record, image = item
    found = drops.get(record["key"]) if record["status"] == KEPT else None
    if found is None:
        return item
    kept_key, distance, kind = found
    return {**record, "status": REJECTED, "reason": CurationReason.CORPUS_DUPLICATE.value,
            "detail": drop_detail(kept_key, distance, kind)}, None


def _tag_batch(batch, config):
    records = tag_languages([record for record, _ in batch], config)
    return [(record, image) for record, (_, image) in zip(records, batch)]


def _duplicate_positions(key_positions):
    key, positions = key_positions
    ordered = sorted(positions)
    return ordered[1:]  # the first copy (earliest shard, earliest index) is kept


def _top_k(gram_counts: list, k: int) -> frozenset:
    ranked = sorted(gram_counts, key=lambda gc: (-gc[1], gc[0]))  # ties broken by the gram
    return frozenset(g for g, _ in ranked[:k])


def _write_shard(item, out_dir: str):
    index, records = item
    records = sorted(records, key=lambda r: r[0]["key"])
    write_shard(out_dir, f"{index:05d}", records)
    return index, len(records)


def _write_rejected(records: list, path: str):
    rows = sorted(records, key=lambda r: (r["key"] or "", r["source_shard"] or ""))
    table = pa.Table.from_pylist(rows, schema=PAIR_SCHEMA) if rows else PAIR_SCHEMA.empty_table()
    tmp = path + ".tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _write_json(value, path: str):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, sort_keys=True)
    os.replace(tmp, path)


def pipeline_options(workers: int = 2, beam_args: list[str] | None = None) -> tuple[PipelineOptions, object]:
    """(options, runner): FnApiRunner multi-processing unless ``--runner`` is in beam_args."""
    beam_args = list(beam_args or [])
    if any(a.startswith("--runner") for a in beam_args):
        return PipelineOptions(beam_args), None
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    options = PipelineOptions(
        [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing",
         "--default_sdk_harness_log_level=WARNING"] + beam_args
    )
    return options, FnApiRunner()


def build(p: beam.Pipeline, raw_shards: list[str], out_dir: str, config: CurationConfig, workers: int = 2):
    """Add the curation transforms to pipeline ``p``."""
    shards_dir = os.path.join(out_dir, "shards")
    counts_dir = os.path.join(out_dir, COUNTS_DIR)

    samples = (
        p
        | "RawShards" >> beam.Create(raw_shards)
        | "Reshuffle shards" >> beam.Reshuffle()
        | "Read" >> beam.FlatMap(_read)
    )
    if len(raw_shards) < 2 * workers:
        # too few shards to keep every worker busy: spread the samples themselves (this moves
        # every image's bytes once more, so it is skipped when shards alone can spread the work)
        samples = samples | "Reshuffle samples" >> beam.Reshuffle()
    candidates = samples | "Examine" >> beam.MapTuple(lambda shard, index, raw: examine(raw, shard, index, config))
    _ = (
        samples
        | "CountInputs" >> beam.combiners.Count.Globally()
        | "WriteInputs" >> beam.Map(_write_json, os.path.join(counts_dir, "inputs.json"))
    )

    duplicates = (
        candidates
        | "KeyPositions" >> beam.Map(lambda c: (c.record["key"], c.position))
        | "ByKey" >> beam.GroupByKey()
        | "Later copies" >> beam.FlatMap(_duplicate_positions)
    )
    # one set of (shard, index) positions, used by the valid-records filter and the verdicts
    duplicate_lookup = beam.pvalue.AsSingleton(duplicates | "Duplicate set" >> beam.combiners.ToSet())
    valid = candidates | "Valid first copies" >> beam.Filter(
        lambda c, dups: c.valid and c.position not in dups, duplicate_lookup
    )

    rules_i, rules_t = config.image, config.text
    too_many_texts = (
        valid
        | "Image hash" >> beam.Map(lambda c: (c.record["sha256"], 1))
        | "Texts per image" >> beam.CombinePerKey(sum)
        | "Over text limit" >> beam.Filter(lambda kv: rules_i.max_texts_enabled and kv[1] > rules_i.max_texts_per_image)
    )
    too_common = (
        valid
        | "Text,image" >> beam.Map(lambda c: (c.text_key, c.record["sha256"]))
        | "Distinct text,image" >> beam.Distinct()
        | "Text" >> beam.Map(lambda kv: (kv[0], 1))
        | "Images per text" >> beam.CombinePerKey(sum)
        | "Over image limit" >> beam.Filter(lambda kv: rules_t.max_images_per_text_enabled and kv[1] > rules_t.max_images_per_text)
    )
    valid_count = valid | "CountValid" >> beam.combiners.Count.Globally()
    if rules_t.rare_tokens_enabled:
        gram_counts = (
            valid
            | "Grams" >> beam.FlatMap(lambda c: c.grams)
            | "Document frequency" >> beam.combiners.Count.PerElement()
        )
        frequent = (
            valid_count
            | "Top K" >> beam.Map(lambda n, counts: _top_k(counts, config.rare_tokens_k(n)), beam.pvalue.AsList(gram_counts))
        )
        frequent_side = beam.pvalue.AsSingleton(frequent)
    else:
        frequent_side = beam.pvalue.AsSingleton(p | "No gram rule" >> beam.Create([None]))

    def _verdicts(n_valid, dups, images, texts, grams) -> CorpusVerdicts:
        return CorpusVerdicts(
            duplicate_positions=frozenset(dups),
            images_with_too_many_texts=dict(images),
            texts_too_common=dict(texts),
            frequent_grams=grams,
            limits={
                "max_texts_per_image": rules_i.max_texts_per_image,
                "max_images_per_text": rules_t.max_images_per_text,
                "rare_tokens_k": config.rare_tokens_k(n_valid),
            },
        )

    # one small object, built once and broadcast, instead of rebuilt for every element
    verdicts = valid_count | "Corpus verdicts" >> beam.Map(
        _verdicts, duplicate_lookup, beam.pvalue.AsList(too_many_texts), beam.pvalue.AsList(too_common), frequent_side
    )
    decided = (
        candidates
        | "Decide" >> beam.Map(lambda c, v: (decide(c, v), c.image), beam.pvalue.AsSingleton(verdicts))
        | "Batch for language" >> beam.BatchElements(min_batch_size=64, max_batch_size=2048)
        | "Language" >> beam.FlatMap(_tag_batch, config)
        | "Eval duplicates" >> beam.ParDo(MatchEvalSets(config.eval_dedup))
    )
    rules_c = config.corpus_dedup
    if rules_c.remove != "none":
        # every kept pair's (key, sha256, pHash) on one worker, the keys to drop broadcast back:
        # fits in memory at demo/medium scale; at ALIGN scale a sharded join (see the docstring).
        # Kept keys are unique (duplicate_key ran first), and the answer does not depend on the
        # order ToList gathers them in, so the output stays deterministic.
        drops = (
            decided
            | "Kept hashes" >> beam.FlatMap(_kept_hashes)
            | "All kept hashes" >> beam.combiners.ToList()
            | "Corpus duplicates" >> beam.Map(duplicates_to_drop, rules_c.remove, rules_c.radius)
        )
        decided = decided | "Drop corpus duplicates" >> beam.Map(_drop_corpus_duplicate, beam.pvalue.AsSingleton(drops))
    kept = decided | "Kept" >> beam.Filter(lambda ri: ri[0]["status"] == KEPT)
    rejected = decided | "Rejected" >> beam.FlatMap(lambda ri: [ri[0]] if ri[0]["status"] != KEPT else [])

    # shard assignment: kept keys in sorted order, shard_size per shard: deterministic
    shard_size = config.output.shard_size
    shard_of = (
        kept
        | "Kept keys" >> beam.Map(lambda ri: ri[0]["key"])
        | "All kept keys" >> beam.combiners.ToList()
        | "Shard index" >> beam.Map(lambda keys: {k: i // shard_size for i, k in enumerate(sorted(keys))})
    )
    _ = (
        kept
        | "To shard" >> beam.Map(lambda ri, index: (index[ri[0]["key"]], ri), beam.pvalue.AsSingleton(shard_of))
        | "By shard" >> beam.GroupByKey()
        | "Write shards" >> beam.Map(_write_shard, shards_dir)
    )
    _ = (
        rejected
        | "All rejected" >> beam.combiners.ToList()
        | "Write rejected" >> beam.Map(_write_rejected, os.path.join(out_dir, "rejected.parquet"))
    )
    _ = (
        valid_count
        | "Write valid count" >> beam.Map(lambda n: _write_json({"valid": n, "rare_tokens_k": config.rare_tokens_k(n)},
                                                                 os.path.join(counts_dir, "valid.json")))
    )


def run_pipeline(raw_dir: str | Path, out_dir: str | Path, config: CurationConfig, workers: int = 2,
                 beam_args: list[str] | None = None) -> None:
    """Run the pipeline to completion. ``out_dir`` is emptied first: a run owns its folder."""
    raw_shards = [str(p.resolve()) for p in list_shards(Path(raw_dir))]
    if not raw_shards:
        raise FileNotFoundError(f"{raw_dir}: no raw shards (*.tar) to curate")
    out_dir = Path(out_dir).resolve()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "shards").mkdir(parents=True)
    (out_dir / COUNTS_DIR).mkdir()
    options, runner = pipeline_options(workers, beam_args)
    with beam.Pipeline(runner=runner, options=options) as p:
        build(p, raw_shards, str(out_dir), config, workers)
