"""The data contracts, decided once: the pair record, its rejection reasons, and the
manifest schema shared by curation, de-duplication and training.

A *pair* is one image with its alt-text. Every input record of a stage ends up either
``kept`` or ``rejected`` with exactly one ``reason`` from :class:`CurationReason`.
"""

from __future__ import annotations

from enum import Enum

import pyarrow as pa


class CurationReason(str, Enum):
    """Why a raw sample did not become a curated pair (closed set; the manifest counts each)."""

    UNREADABLE_SHARD = "unreadable_shard"      # a raw tar breaks off: one record for the unreadable rest
    MISSING_IMAGE = "missing_image"            # sample has a .txt/.json but no image
    MISSING_TEXT = "missing_text"              # sample has an image but no .txt
    DUPLICATE_KEY = "duplicate_key"            # a later sample reused a key already seen
    DECODE_ERROR = "decode_error"              # corrupt / truncated image bytes
    IMAGE_TOO_LARGE = "image_too_large"        # decompression bomb guard
    UNSUPPORTED_IMAGE = "unsupported_image"    # a mode or format we cannot convert
    TOO_SMALL = "too_small"                    # shorter side of the original <= min_side
    ASPECT_RATIO = "aspect_ratio"              # long/short side of the original >= max_aspect
    IMAGE_TOO_MANY_TEXTS = "image_too_many_texts"  # same image bytes with > N alt-texts
    TEXT_INVALID = "text_invalid"              # not UTF-8, or NUL / control bytes only
    TEXT_EMPTY = "text_empty"                  # nothing left after normalisation
    TEXT_TOO_LONG = "text_too_long"            # over the byte bound (when policy is reject)
    TEXT_TOO_SHORT = "text_too_short"          # fewer unigrams than the minimum
    TEXT_TOO_MANY_WORDS = "text_too_many_words"  # more unigrams than the maximum
    TEXT_TOO_COMMON = "text_too_common"        # the same normalised alt-text on > N images
    TEXT_RARE_TOKENS = "text_rare_tokens"      # a token outside the K most frequent
    LANGUAGE_NOT_ALLOWED = "language_not_allowed"
    EVAL_DUPLICATE = "eval_duplicate"          # near-duplicate of an evaluation image
    CORPUS_DUPLICATE = "corpus_duplicate"      # (optional) duplicate inside the corpus


class AccountingError(RuntimeError):
    """Records in != kept (or downloaded) + rejected: something was lost or doubled; the run fails."""


KEPT = "kept"
REJECTED = "rejected"

# One row per pair in a curated shard's parquet manifest (and in rejected.parquet)
PAIR_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("sha256", pa.string()),
        ("phash", pa.uint64()),
        ("lang", pa.string()),
        ("lang_prob", pa.float32()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("eval_set", pa.string()),
        ("eval_split", pa.string()),
        ("eval_key", pa.string()),
        ("eval_distance", pa.int32()),     # pHash bits, as dedup.matches' distance
        ("source_shard", pa.string()),
    ]
)
PAIR_FIELDS = tuple(PAIR_SCHEMA.names)


def empty_pair(**values) -> dict:
    """A pair record with every field present (None where unknown)."""
    record = dict.fromkeys(PAIR_FIELDS)
    unknown = set(values) - set(PAIR_FIELDS)
    if unknown:
        raise KeyError(f"not pair record fields: {sorted(unknown)}")
    record.update(values)
    return record
