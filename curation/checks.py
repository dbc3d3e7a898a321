"""Per-record work of the curation pipeline, free of Beam so that a test can run it alone.

:func:`examine` turns one raw sample into a *candidate*: a pair record (see
:mod:`infra.contract`) plus what the corpus-wide steps need (content hash, normalised
text, unigrams/bigrams) and the per-record rules it fails. :func:`decide` later gives each
candidate its single final reason — the first failing rule in :data:`RULE_ORDER` — once
the corpus-wide counts are known.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from curation.config import CurationConfig
from curation.decode import ImageRejected, decode_image, encode_jpeg
from curation.language import tag_many
from curation.text import TextRejected, normalise, unigrams, unigrams_and_bigrams
from dedup.evalsets import image_member
from dedup.phash import DEFAULT_SETTINGS as HASH_SETTINGS, grey_for_hash, phashes_from_grey
from infra.contract import KEPT, REJECTED, CurationReason as R, empty_pair

# the order in which rules are attributed: structure, validity, image, text, language, eval
RULE_ORDER = (
    R.UNREADABLE_SHARD, R.DUPLICATE_KEY, R.MISSING_IMAGE, R.MISSING_TEXT,
    R.DECODE_ERROR, R.IMAGE_TOO_LARGE, R.UNSUPPORTED_IMAGE,
    R.TEXT_INVALID, R.TEXT_EMPTY, R.TEXT_TOO_LONG,
    R.TOO_SMALL, R.ASPECT_RATIO, R.IMAGE_TOO_MANY_TEXTS,
    R.TEXT_TOO_SHORT, R.TEXT_TOO_MANY_WORDS, R.TEXT_TOO_COMMON, R.TEXT_RARE_TOKENS,
    R.LANGUAGE_NOT_ALLOWED, R.EVAL_DUPLICATE, R.CORPUS_DUPLICATE,
)
STAGE_OF = {
    **dict.fromkeys((R.UNREADABLE_SHARD, R.DUPLICATE_KEY, R.MISSING_IMAGE, R.MISSING_TEXT), "read"),
    **dict.fromkeys((R.DECODE_ERROR, R.IMAGE_TOO_LARGE, R.UNSUPPORTED_IMAGE), "decode"),
    **dict.fromkeys((R.TEXT_INVALID, R.TEXT_EMPTY, R.TEXT_TOO_LONG), "text_normalise"),
    **dict.fromkeys((R.TOO_SMALL, R.ASPECT_RATIO, R.IMAGE_TOO_MANY_TEXTS), "image_filters"),
    **dict.fromkeys((R.TEXT_TOO_SHORT, R.TEXT_TOO_MANY_WORDS, R.TEXT_TOO_COMMON, R.TEXT_RARE_TOKENS), "text_filters"),
    R.LANGUAGE_NOT_ALLOWED: "language",
    R.EVAL_DUPLICATE: "eval_dedup",
    R.CORPUS_DUPLICATE: "corpus_dedup",
}
STAGES = ("read", "decode", "text_normalise", "image_filters", "text_filters", "language", "eval_dedup", "corpus_dedup")
VALIDITY = {r for r in RULE_ORDER if STAGE_OF[r] in ("read", "decode", "text_normalise")}


@dataclass
class Candidate:
    record: dict                       # the pair record (contract fields only)
    position: tuple[str, int]          # (source shard, index in it): tie-break for duplicates
    image: bytes | None = None         # bytes to write into the curated shard
    text_key: str | None = None        # case-folded normalised caption, for text frequency
    grams: frozenset = frozenset()     # distinct unigrams + bigrams
    failures: dict[str, str] = field(default_factory=dict)  # per-record rule failed -> detail
    reencoded: bool = False            # image is a re-encoding (see :func:`output_image`), not the raw bytes
    grey: np.ndarray | None = None     # the grey pixels pHash reads, until hashed (finish_hashes)

    @property
    def valid(self) -> bool:
        """Passed structure and decoding: counts toward corpus-wide statistics."""
        return not any(R(f) in VALIDITY for f in self.failures)


def _meta(raw: dict) -> dict:
    try:
        meta = json.loads(raw["json"]) if raw.get("json") else {}
        return meta if isinstance(meta, dict) else {}
    except (ValueError, UnicodeDecodeError):
        return {}


def image_bytes(raw: dict) -> bytes | None:
    ext = image_member(raw)
    return raw[ext] if ext else None


def examine(raw: dict, shard: str, index: int, config: CurationConfig, defer_hash: bool = False) -> Candidate:
    """Everything about one raw sample that does not need the rest of the corpus. With
    ``defer_hash``, the pHash is left to :func:`finish_hashes` (a shard's at once)."""
    meta = _meta(raw)
    record = empty_pair(key=raw["__key__"], url=meta.get("url"), source_shard=shard)
    candidate = Candidate(record, (shard, index))
    if "__error__" in raw:  # what could not be read of a broken shard, as one record
        candidate.failures[R.UNREADABLE_SHARD.value] = raw["__error__"]
        return candidate
    data = image_bytes(raw)

    try:
        decoded = decode_image(data, config.decode.max_pixels, draft=HASH_SETTINGS.jpeg_draft)
    except ImageRejected as err:
        candidate.failures[err.reason] = err.detail
        decoded = None
    try:
        text = normalise(raw.get("txt"), config.text.max_chars, config.text.too_long)
        record["caption"] = text.text
        if text.truncated_from is not None:
            record["detail"] = f"caption truncated from {text.truncated_from} characters"
    except TextRejected as err:
        candidate.failures[err.reason] = err.detail
        text = None

    if decoded is not None:
        record["width"], record["height"] = decoded.size
        record["original_width"] = int(meta.get("original_width") or decoded.size[0])
        record["original_height"] = int(meta.get("original_height") or decoded.size[1])
        # img2dataset hashes the bytes it downloaded; the same picture re-encoded elsewhere
        # would differ, which is what ALIGN's "same image" meant too (content hash)
        record["sha256"] = meta.get("sha256") or hashlib.sha256(data).hexdigest()
        # hashed as the bytes that are written would be, with the eval index's settings, so a
        # later `litflow dedup report` over the curated shards computes the very same values:
        # a kept-as-is JPEG was decoded exactly as dedup.phash.open_for_hash decodes it
        if decoded.converted:
            candidate.image = encode_jpeg(decoded.image, config.decode.jpeg_quality)
            candidate.reencoded = True
            candidate.grey = grey_for_hash(candidate.image, HASH_SETTINGS)
        else:
            candidate.image = data
            candidate.grey = decoded.grey if decoded.reduced else grey_for_hash(data, HASH_SETTINGS)
        short, long = sorted((record["original_width"], record["original_height"]))
        rules = config.image
        if rules.min_side_enabled and short <= rules.min_side:
            candidate.failures[R.TOO_SMALL.value] = f"shorter side {short} px <= {rules.min_side}"
        if rules.aspect_enabled and long >= rules.max_aspect * short:
            candidate.failures[R.ASPECT_RATIO.value] = f"aspect {long}/{short} = {long / short:.3f} >= {rules.max_aspect}"

    if text is not None:
        tokens, words = unigrams(text.text, config.text.chars_per_word_unsegmented)
        candidate.text_key = " ".join(tokens) if tokens else text.text.casefold()
        candidate.grams = frozenset(unigrams_and_bigrams(tokens))
        rules = config.text
        if rules.min_words_enabled and words < rules.min_words:
            candidate.failures[R.TEXT_TOO_SHORT.value] = f"{words} unigram(s) < {rules.min_words}"
        if rules.max_words_enabled and words > rules.max_words:
            candidate.failures[R.TEXT_TOO_MANY_WORDS.value] = f"{words} unigrams > {rules.max_words}"
    if candidate.failures:
        candidate.image = None  # rejected whatever the corpus says: do not carry the bytes on
    if not defer_hash:
        finish_hashes([candidate])
    return candidate


def finish_hashes(candidates: Sequence[Candidate]) -> None:
    """Set the pHash of every candidate :func:`examine` left unhashed (``defer_hash``): their
    resizes batched by shape and one DCT for all (the same values as one at a time:
    ``dedup.phash``)."""
    pending = [c for c in candidates if c.grey is not None]
    for candidate, value in zip(pending, phashes_from_grey([c.grey for c in pending], HASH_SETTINGS)):
        candidate.record["phash"] = int(value)
        candidate.grey = None


def output_image(data: bytes, reencoded: bool, config: CurationConfig) -> bytes:
    """The bytes a kept pair's image is written as: the raw bytes, or (``reencoded``) the
    same JPEG re-encoding :func:`examine` hashed — decoding is deterministic, so the bytes
    are identical to the ones examined."""
    if not reencoded:
        return data
    decoded = decode_image(data, config.decode.max_pixels, draft=HASH_SETTINGS.jpeg_draft)
    return encode_jpeg(decoded.image, config.decode.jpeg_quality)


def tag_languages(records: list[dict], config: CurationConfig) -> list[dict]:
    """Languages of decided records' captions (a batch); may reject kept ones as
    language_not_allowed.

    Runs after :func:`decide`, on kept records only unless ``language.tag_rejected``:
    langdetect costs more than decoding and hashing together, and most web pairs are
    rejected by cheaper rules first.
    """
    rules = config.language
    if not rules.enabled:
        return records
    wanted = [i for i, r in enumerate(records)
              if r["caption"] is not None and (r["status"] == KEPT or rules.tag_rejected)]
    tags = tag_many([records[i]["caption"] for i in wanted], rules.min_prob)
    out = list(records)
    for i, (lang, prob) in zip(wanted, tags):
        record = dict(records[i], lang=lang, lang_prob=prob)
        if record["status"] == KEPT and rules.allow and lang not in rules.allow:
            record["status"], record["reason"] = REJECTED, R.LANGUAGE_NOT_ALLOWED.value
            record["detail"] = f"language {lang} not in {rules.allow}"
        out[i] = record
    return out


def attribute(record: dict, failures: dict[str, str]) -> dict:
    """``record`` kept, or rejected for the first of ``failures`` (reason -> detail) in
    :data:`RULE_ORDER`: one reason per record, whatever else it failed."""
    record = dict(record)
    for reason in RULE_ORDER:
        if reason.value in failures:
            record["status"], record["reason"], record["detail"] = REJECTED, reason.value, failures[reason.value]
            return record
    record["status"] = KEPT
    return record


__all__ = ["Candidate", "RULE_ORDER", "STAGES", "STAGE_OF", "attribute", "examine", "finish_hashes", "image_bytes", "output_image", "tag_languages"]
