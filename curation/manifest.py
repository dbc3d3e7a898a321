"""The run manifest (``corpus.json``) and the accounting check, computed from the outputs.

The counts each raw shard's last pass wrote (``_counts/STEM.json``) are summed, and every
shard's are checked against what was written — the row counts in the footers of its facts
file (what was examined), its curated shards' parquet and ``rejected/STEM.parquet`` — so the
check sees exactly what a reader will see. It reads one small file and three footers per raw
shard: the cost grows with the number of shards, not of pairs.
Removals by the optional intra-corpus de-duplication are counted under ``rejected`` and
``stages.corpus_dedup`` like every reason, and split by kind in ``corpus_duplicates``.
Nothing time-dependent goes into ``corpus.json``, so two runs on the same input and config
produce identical manifests (timings go to ``timing.json``).
"""

from __future__ import annotations

from pathlib import Path

from curation import storage
from curation.checks import STAGE_OF, STAGES
from curation.config import CurationConfig
from curation.provenance import code_revision, library_versions
from curation.shard_passes import COUNTS_DIR, WORK_DIR, facts_path
from dedup.phash import DEFAULT_SETTINGS as HASH_SETTINGS
from dedup.verify import VerifyRules
from infra.contract import AccountingError, CorpusManifest, CurationReason


def _stage_counts(inputs: int, rejected_by_reason: dict[str, int]) -> dict:
    stages, remaining = {}, inputs
    for stage in STAGES:
        reasons = {r: n for r, n in rejected_by_reason.items() if STAGE_OF[CurationReason(r)] == stage}
        out = remaining - sum(reasons.values())
        stages[stage] = {"in": remaining, "out": out, "rejected": dict(sorted(reasons.items()))}
        remaining = out
    return stages


def _add(total: dict, part: dict) -> None:
    for key, value in part.items():
        if isinstance(value, dict):
            _add(total.setdefault(key, {}), value)
        else:
            total[key] = total.get(key, 0) + value


def _summed_counts(out: str, raw_shards: list[str]) -> dict:
    """The per-shard counts summed, each shard checked against its written files (O(shards)
    small files and parquet footers: nothing here grows with the number of pairs)."""
    total: dict = {"inputs": 0, "kept": 0, "rejected": {}, "languages_kept": {}, "languages_rejected": {},
                   "eval_duplicates": {}, "corpus_duplicates": {}}
    shards = []
    for raw in raw_shards:
        stem = storage.stem(raw)
        counts_file = storage.join(out, COUNTS_DIR, f"{stem}.json")
        if not storage.exists(counts_file):
            raise AccountingError(f"{out}: raw shard {raw} has no counts: it was not curated to the end")
        counts = storage.read_json(counts_file)
        examined = storage.parquet_rows(facts_path(out, raw))
        rejected = storage.parquet_rows(storage.join(out, "rejected", f"{stem}.parquet"))
        kept = sum(storage.parquet_rows(storage.join(out, "shards", s["name"][:-4] + ".parquet")) for s in counts["shards"])
        if not (examined == counts["inputs"] == kept + rejected) or kept != counts["kept"]:
            raise AccountingError(f"{out}: raw shard {raw}: {examined} examined, counts say {counts['inputs']} "
                                  f"inputs, written {kept} kept + {rejected} rejected")
        shards.extend(counts.pop("shards"))
        counts.pop("raw_shard")
        _add(total, counts)
    total["shards"] = shards
    return total


def build_manifest(raw_dir: str | Path, out_dir: str | Path, config: CurationConfig,
                   raw_shards: list[str]) -> CorpusManifest:
    """``corpus.json`` of a finished run (the model checks inputs = kept + Σ rejected itself)."""
    out = str(out_dir)
    corpus = storage.read_json(storage.join(out, WORK_DIR, "stats.json"))
    counts = _summed_counts(out, raw_shards)
    inputs, kept = counts["inputs"], counts["kept"]
    by_reason = dict(sorted(counts["rejected"].items()))
    rejected = sum(by_reason.values())
    return CorpusManifest.parse({
        "preset": config.preset,
        "config": config.to_dict(),
        "input": str(raw_dir),
        "inputs": inputs,
        "kept": kept,
        "rejected": by_reason,
        "accounting": f"{inputs} inputs = {kept} kept + {rejected} rejected",
        "stages": _stage_counts(inputs, by_reason),
        "rare_tokens_k": corpus.get("rare_tokens_k") if config.text.rare_tokens_enabled else None,
        "rare_tokens_threshold_df": corpus.get("rare_tokens_threshold_df") if config.text.rare_tokens_enabled else None,
        "valid_pairs": corpus.get("valid"),
        "languages": {
            "kept": dict(sorted(counts["languages_kept"].items())),
            "rejected": {lang: dict(sorted(r.items())) for lang, r in sorted(counts["languages_rejected"].items())},
        },
        "hash_settings": HASH_SETTINGS.to_dict(),
        # the thresholds eval-duplicate candidates were verified with (None: pHash alone)
        "eval_dedup_verify": VerifyRules().to_dict() if config.eval_dedup.verify else None,
        "eval_duplicates": {s: dict(sorted(v.items())) for s, v in sorted(counts["eval_duplicates"].items())},
        "corpus_duplicates": {kind: int(counts["corpus_duplicates"].get(kind, 0)) for kind in ("exact", "near")},
        "shards": counts["shards"],
        "versions": library_versions(),
        "code_revision": code_revision(),
    }, where=storage.join(out, CorpusManifest.FILE))

