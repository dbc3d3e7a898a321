"""The run manifest (``corpus.json``) and the accounting check, computed from the outputs.

Counting from what was written — every curated shard's parquet and ``rejected.parquet`` —
rather than from in-flight counters means the check sees exactly what a reader will see.
Removals by the optional intra-corpus de-duplication are counted under ``rejected`` and
``stages.corpus_dedup`` like every reason, and split by kind in ``corpus_duplicates``.
Nothing time-dependent goes into ``corpus.json``, so two runs on the same input and config
produce identical manifests (timings go to ``timing.json``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import pandas as pd

from curation.checks import STAGE_OF, STAGES
from curation.config import CurationConfig
from curation.pipeline import COUNTS_DIR
from curation.provenance import code_revision, library_versions
from curation.records import CurationReason
from dedup.phash import DEFAULT_SETTINGS as HASH_SETTINGS
from dedup.verify import VerifyRules
from curation.shards import list_shards


class AccountingError(RuntimeError):
    """inputs != kept + Σ rejected: a record was lost or doubled; the run fails."""


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _stage_counts(inputs: int, rejected_by_reason: dict[str, int]) -> dict:
    stages, remaining = {}, inputs
    for stage in STAGES:
        reasons = {r: n for r, n in rejected_by_reason.items() if STAGE_OF[CurationReason(r)] == stage}
        out = remaining - sum(reasons.values())
        stages[stage] = {"in": remaining, "out": out, "rejected": dict(sorted(reasons.items()))}
        remaining = out
    return stages


def _eval_duplicates(rejected: pd.DataFrame) -> dict:
    """{eval set: {split: pairs removed}} for the audit trail."""
    dups = rejected[rejected["reason"] == CurationReason.EVAL_DUPLICATE.value]
    out: dict = {}
    for (set_name, split), n in dups.groupby(["eval_set", "eval_split"]).size().items():
        out.setdefault(set_name, {})[split] = int(n)
    return out


def _corpus_duplicates(rejected: pd.DataFrame) -> dict:
    """{"exact": pairs removed, "near": pairs removed} by the optional corpus_dedup step; the
    kind is the first word of the detail (:func:`dedup.intra.drop_detail`)."""
    dups = rejected[rejected["reason"] == CurationReason.CORPUS_DUPLICATE.value]
    kinds = Counter(str(detail).split(" ", 1)[0] for detail in dups["detail"])
    return {kind: int(kinds.get(kind, 0)) for kind in ("exact", "near")}


def build_manifest(raw_dir: Path, out_dir: Path, config: CurationConfig) -> dict:
    counts_dir = out_dir / COUNTS_DIR
    inputs = json.loads((counts_dir / "inputs.json").read_text())
    valid = json.loads((counts_dir / "valid.json").read_text()) if (counts_dir / "valid.json").exists() else {}
    shards = list_shards(out_dir / "shards")
    kept_frames = [pd.read_parquet(s.with_suffix(".parquet"), columns=["key", "lang"]) for s in shards]
    kept = pd.concat(kept_frames, ignore_index=True) if kept_frames else pd.DataFrame(columns=["key", "lang"])
    rejected = pd.read_parquet(out_dir / "rejected.parquet", columns=["key", "reason", "detail", "lang", "eval_set", "eval_split"])
    by_reason = {str(r): int(n) for r, n in sorted(Counter(rejected["reason"]).items())}
    total = len(kept) + len(rejected)
    if total != inputs:
        raise AccountingError(f"{out_dir}: inputs {inputs} != kept {len(kept)} + rejected {len(rejected)}")
    if kept["key"].duplicated().any():
        raise AccountingError(f"{out_dir}: a key appears twice among kept samples")
    by_lang_reason = (
        rejected.fillna({"lang": "none"}).groupby(["lang", "reason"]).size().unstack(fill_value=0)
        if len(rejected) else pd.DataFrame()
    )
    return {
        "preset": config.preset,
        "config": config.to_dict(),
        "input": str(raw_dir),
        "inputs": inputs,
        "kept": len(kept),
        "rejected": by_reason,
        "accounting": f"{inputs} inputs = {len(kept)} kept + {len(rejected)} rejected",
        "stages": _stage_counts(inputs, by_reason),
        "rare_tokens_k": valid.get("rare_tokens_k") if config.text.rare_tokens_enabled else None,
        "valid_pairs": valid.get("valid"),
        "languages": {
            "kept": dict(sorted(Counter(kept["lang"].fillna("none")).items())),
            "rejected": {lang: {r: int(n) for r, n in row.items() if n} for lang, row in by_lang_reason.iterrows()},
        },
        "hash_settings": HASH_SETTINGS.to_dict(),
        # the thresholds eval-duplicate candidates were verified with (None: pHash alone)
        "eval_dedup_verify": VerifyRules().to_dict() if config.eval_dedup.verify else None,
        "eval_duplicates": _eval_duplicates(rejected),
        "corpus_duplicates": _corpus_duplicates(rejected),
        "shards": [
            {"name": s.name, "samples": int(len(f)), "sha256": _sha256(s)} for s, f in zip(shards, kept_frames)
        ],
        "versions": library_versions(),
        "code_revision": code_revision(),
    }


def write_json_atomic(value: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
