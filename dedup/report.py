"""``litflow dedup report``: match a corpus against the eval index and write the audit.

Takes the corpus as records (:class:`dedup.corpus.Corpus`); reading it from shards is
:func:`curation.eval_audit.audit_corpus`'s part.

Writes into ``out/``:

* ``matches.parquet`` — every (corpus pair, eval image) candidate, in :mod:`infra.contract`'s schema: within the pHash radius, all
  splits, plus embedding candidates when given (``litflow dedup flag``); with the verification
  (``confirmed``, ``undecided``, ``verification``), ``flagged`` (confirmed or undecided; every
  candidate when verification is off) and ``removed`` = flagged and counted under the mode.
  Unconfirmed candidates stay in the table and on the page, marked, for the auditor to check.
* ``report.json`` — settings, radius, mode; per eval set and split: eval images, unreadable
  (count and list), corpus pairs matched, removed; intra-corpus duplicate groups.
* ``corpus_duplicates.parquet`` — exact/near duplicate groups inside the corpus.
* ``report.html`` — the page a person checks by eye (:mod:`dedup.html`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from dedup.corpus import Corpus
from dedup.evalsets import read_ref
from dedup.html import render, thumbnail_data_uri
from dedup.index import SIGNALS, EvalIndex
from dedup.intra import duplicate_groups
from dedup.modes import removes
from infra.contract import NO_DISTANCE, EvalIndexManifest, write_matches
from infra.files import write_text_atomic


def _eval_metadata(index_dir: Path, manifest: EvalIndexManifest) -> pd.DataFrame:
    frames = []
    for set_name, info in manifest.sets.items():
        for split, split_info in info.splits.items():
            frame = pq.read_table(index_dir / split_info.file, columns=["key", "ref", "label", "caption"]).to_pandas()
            frames.append(frame.assign(eval_set=set_name, eval_split=split))
    return pd.concat(frames, ignore_index=True).rename(
        columns={"key": "eval_key", "ref": "eval_ref", "label": "eval_label", "caption": "eval_caption"})


def _verify_phash_matches(matches: pd.DataFrame, eval_refs: list[str], ways: list[tuple[bool, bool]],
                          verify: bool, verifier) -> pd.DataFrame:
    """Add confirmed / undecided / verification / flagged to the pHash matches.

    ``ways``: per match, which way round to compare it (as curation does: EvalIndex.ways)."""
    if not verify:
        return matches.assign(confirmed=False, undecided=False, verification="not verified", flagged=True)
    from dedup.evalsets import read_ref
    from dedup.verify import Verifier

    features = {}
    verdicts = []
    for corpus_ref, eval_ref, distance, way in zip(matches["corpus_ref"], eval_refs, matches["distance"], ways):
        if corpus_ref not in features:
            try:
                features[corpus_ref] = Verifier.corpus_features(read_ref(corpus_ref))
            except Exception:  # noqa: BLE001 - the shard or member cannot be read: no verdict, undecided
                features[corpus_ref] = None
        verdicts.append(verifier.try_check(features[corpus_ref], eval_ref, int(distance), way))
    return matches.assign(
        confirmed=[bool(v and v.confirmed) for v in verdicts],
        undecided=[v is None or v.undecided for v in verdicts],
        verification=[v.summary() if v else "verification undecided (image unreadable)" for v in verdicts],
        flagged=[v is None or Verifier.decide(v) for v in verdicts])


def _verify_rules(verify: bool, verifier) -> dict | None:
    return verifier.rules.to_dict() if verify else None


def build_report(corpus: Corpus, index_dir: str | Path, out: str | Path, radius: int = 8,
                 mode: str = "train+test", near_radius: int | None = 4, page_size: int = 50,
                 embedding_matches: pd.DataFrame | None = None, verify: bool = True, verifier=None) -> dict:
    """Match, write matches.parquet / report.json / report.html / corpus_duplicates.parquet."""
    index_dir, out = Path(index_dir), Path(out)
    full = EvalIndex.load(index_dir, mode="train+test")
    full.check_settings(corpus.settings)  # hashes made another way cannot be compared
    if verify and verifier is None:
        from dedup.feature_store import FeatureStore
        from dedup.verify import Verifier

        verifier = Verifier(stored=FeatureStore(index_dir))  # the eval keypoints the index stores, if any
    removed_splits = {(s, sp) for s, sp, role in full.splits if removes(mode, role)}
    q, image, dist, signal = full.match_many(corpus.phash, radius)
    where = [full.describe(int(i)) for i in image]
    matches = pd.DataFrame({
        "key": [corpus.keys[i] for i in q], "corpus_ref": [corpus.refs[i] for i in q],
        "corpus_caption": [corpus.captions[i] for i in q], "corpus_sha256": [corpus.sha256[i] for i in q],
        "corpus_phash": corpus.phash[q] if len(q) else np.zeros(0, np.uint64),
        "eval_set": [w[0] for w in where], "eval_split": [w[1] for w in where], "eval_key": [w[2] for w in where],
        "distance": dist.astype(np.int32), "signal": [SIGNALS[s] for s in signal],
        "cosine": np.full(len(q), np.nan, np.float32),
    })
    matches = _verify_phash_matches(matches, [full.refs[int(i)] for i in image],
                                    [full.ways(corpus.phash[c], int(i), radius) for c, i in zip(q, image)],
                                    verify, verifier)
    if embedding_matches is not None and len(embedding_matches):
        emb = embedding_matches.copy()
        lookup = {k: i for i, k in enumerate(corpus.keys)}
        emb = emb[emb["key"].isin(lookup)].copy()
        idx = [lookup[k] for k in emb["key"]]
        emb = emb.assign(corpus_ref=[corpus.refs[i] for i in idx], corpus_caption=[corpus.captions[i] for i in idx],
                         corpus_sha256=[corpus.sha256[i] for i in idx], corpus_phash=corpus.phash[idx],
                         distance=np.int32(NO_DISTANCE), signal="embedding")
        for column, default in (("confirmed", False), ("undecided", False), ("verification", "not verified"),
                                ("flagged", True)):
            if column not in emb:
                emb[column] = default
        key_cols = ["key", "eval_set", "eval_split", "eval_key"]
        both = matches.merge(emb[key_cols + ["cosine"]], on=key_cols, how="left", suffixes=("", "_emb"))
        matches["cosine"] = both["cosine_emb"].to_numpy(np.float32)
        matches.loc[matches["cosine"].notna(), "signal"] += "+embedding"
        # a pair both signals found was verified once; the pHash row keeps that verdict
        only = emb.merge(matches[key_cols], on=key_cols, how="left", indicator=True)
        only = only[only["_merge"] == "left_only"].drop(columns="_merge")
        matches = pd.concat([matches, only[matches.columns]], ignore_index=True)
    matches["removed"] = matches["flagged"] & np.array([(s, sp) in removed_splits for s, sp in zip(matches["eval_set"], matches["eval_split"])], bool)
    meta = _eval_metadata(index_dir, full.manifest)
    matches = matches.merge(meta, on=["eval_set", "eval_split", "eval_key"], how="left")
    # nearest first; embedding-only matches (no pHash distance) after, by falling cosine
    matches["_order"] = np.where(matches["distance"] >= 0, matches["distance"], 65)
    matches = matches.sort_values(["_order", "cosine", "key", "eval_set", "eval_split", "eval_key"],
                                  ascending=[True, False, True, True, True, True]).drop(columns="_order")
    matches = matches.reset_index(drop=True)

    groups = duplicate_groups(corpus.keys, corpus.sha256, corpus.phash, near_radius) if near_radius is not None else None
    summary = {
        "radius": radius, "mode": mode, "verify": _verify_rules(verify, verifier), "settings": full.settings.to_dict(), "settings_id": full.settings.id,
        "corpus": {"dir": corpus.source, "pairs": len(corpus), "unreadable": corpus.unreadable,
                   "hashed_here": corpus.hashed_here,
                   "candidates": int(matches["key"].nunique()),
                   "matched": int(matches.loc[matches["flagged"], "key"].nunique()),
                   "removed": int(matches.loc[matches["removed"], "key"].nunique())},
        "eval_sets": {},
    }
    for set_name, info in full.manifest.sets.items():
        summary["eval_sets"][set_name] = {}
        for split, split_info in info.splits.items():
            sel = (matches["eval_set"] == set_name) & (matches["eval_split"] == split)
            summary["eval_sets"][set_name][split] = {
                "role": split_info.role, "eval_images": split_info.images, "unreadable": len(split_info.unreadable),
                "unreadable_images": [u.model_dump() for u in split_info.unreadable],
                "corpus_pairs_candidates": int(matches.loc[sel, "key"].nunique()),
                "corpus_pairs_matched": int(matches.loc[sel & matches["flagged"], "key"].nunique()),
                "removed": int(matches.loc[sel & matches["removed"], "key"].nunique()),
            }
    out.mkdir(parents=True, exist_ok=True)
    if groups is not None:
        summary["corpus_duplicates"] = {
            "radius": near_radius,
            "exact_groups": int(groups.loc[groups["kind"] == "exact", "group"].nunique()),
            "near_groups": int(groups.loc[groups["kind"] == "near", "group"].nunique()),
            "pairs_in_groups": len(groups), "removable": int((~groups["keep"]).sum()),
        }
        groups.to_parquet(out / "corpus_duplicates.parquet", index=False)
    write_matches(matches, out / "matches.parquet")
    (out / "report.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")

    thumbs: dict[str, str] = {}

    def thumb(ref):
        if ref not in thumbs:
            try:
                thumbs[ref] = thumbnail_data_uri(read_ref(ref))
            except (OSError, KeyError):
                thumbs[ref] = ""
        return thumbs[ref]

    rows = [{
        "distance": "-" if r.distance < 0 else int(r.distance),
        "signals": r.signal + ("" if np.isnan(r.cosine) else f" (cos {r.cosine:.3f})") + f"; {r.verification}",
        "key": r.key, "corpus_caption": r.corpus_caption, "corpus_thumb": thumb(r.corpus_ref),
        "eval_set": r.eval_set, "eval_split": r.eval_split, "eval_key": r.eval_key, "eval_label": r.eval_label,
        "eval_caption": r.eval_caption, "eval_thumb": thumb(r.eval_ref) if isinstance(r.eval_ref, str) else "",
        "removed": bool(r.removed), "flagged": bool(r.flagged),
    } for r in matches.itertuples()]
    write_text_atomic(out / "report.html", render(summary, rows, page_size))
    return summary
