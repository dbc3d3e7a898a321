"""The data contracts, decided once: what every stage writes and what every stage reads.

- **The pair record** (:data:`PAIR_SCHEMA`): one image with its alt-text, one row per pair in a
  curated shard's parquet manifest and in curation's ``rejected/STEM.parquet``. Every input
  record of curation ends up ``kept`` or ``rejected`` with one :class:`CurationReason`.
- **The ingest rejection row** (:data:`INGEST_REJECTED_SCHEMA`): one URL-list row that did not
  become a raw sample, with one :class:`IngestReason`. The two reason sets stay apart on
  purpose: a URL that could not be fetched and a fetched sample that failed a rule are
  different facts with different owners (the ingest report against the corpus manifest).
- **The eval-match row** (:data:`MATCH_SCHEMA`): "this corpus pair duplicates that eval image",
  one schema wherever it is written (the audit report's ``matches.parquet``, the embedding
  check's ``eval_candidates.parquet`` / ``eval_flags.parquet``). Curation's rejection rows carry
  the chosen match inside the pair record (``eval_set``, ``eval_split``, ``eval_key``,
  ``eval_distance``, int32 pHash bits as here).
- **The manifests** as typed models that refuse unknown keys: :class:`CorpusManifest`
  (``corpus.json``), :class:`IngestReport` (``ingest.json``), :class:`EvalIndexManifest`
  (``index.json``) and :class:`EvalMetrics` (``metrics.json``). Writers build the model, so a
  misspelt or missing field fails where it is written; readers load it, so a file of another
  shape fails naming the file and the field. The manifests check their own accounting
  (``inputs = kept + Σ rejected``; ``rows_in = downloaded + Σ failed``, per part too).
  A stage's own config is recorded whole, as a mapping: its model lives with its stage
  (``curation.config``, ``curation.ingest_config``, ``training.config``), which is above this
  layer, and validates it when it reads it back.

This module is at the base of the layer order (it imports no litflow package but
:mod:`infra.files`), so dedup, curation, training and flows all import it.

Memory: a manifest (O(shards + parts + eval splits), never O(pairs)) or the frame of match rows
being written.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from infra.files import replacing, write_text_atomic


class AccountingError(RuntimeError):
    """Records in != kept (or downloaded) + rejected: something was lost or doubled; the run fails."""


# ---------------------------------------------------------------- the pair record

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


KEPT = "kept"
REJECTED = "rejected"

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
        ("status", pa.string()),           # KEPT or REJECTED
        ("reason", pa.string()),           # a CurationReason when rejected
        ("detail", pa.string()),
        ("eval_set", pa.string()),
        ("eval_split", pa.string()),
        ("eval_key", pa.string()),
        ("eval_distance", pa.int32()),     # pHash bits, as MATCH_SCHEMA's distance
        ("source_shard", pa.string()),
    ]
)
PAIR_FIELDS = tuple(PAIR_SCHEMA.names)


def empty_pair(**values) -> dict:
    """A pair record with every field present (None where unknown); an unknown field is an error."""
    record = dict.fromkeys(PAIR_FIELDS)
    unknown = set(values) - set(PAIR_FIELDS)
    if unknown:
        raise KeyError(f"not pair record fields: {sorted(unknown)}")
    record.update(values)
    return record


# ---------------------------------------------------------------- the ingest rejection row

class IngestReason(str, Enum):
    """Why an input row of a URL list did not become a raw sample."""

    INVALID_URL = "invalid_url"              # malformed, no host, or a scheme other than http(s)
    BLOCKED_ADDRESS = "blocked_address"      # host is/resolves to a private, loopback, link-local... address
    BLOCKED_REDIRECT = "blocked_redirect"    # a redirect hop the URL policy refuses (the hop is in the detail)
    TOO_MANY_REDIRECTS = "too_many_redirects"  # more hops than allowed, or a loop
    DNS_FAILURE = "dns_failure"
    CONNECTION_REFUSED = "connection_refused"
    CONNECTION_ERROR = "connection_error"    # reset, unreachable, TLS, ... (detail kept)
    TIMEOUT = "timeout"
    HTTP_404 = "http_404"
    HTTP_403 = "http_403"
    HTTP_429 = "http_429"                    # rate limited, still after honouring Retry-After
    HTTP_5XX = "http_5xx"                    # server error (detail has the code)
    HTTP_ERROR = "http_error"                # any other non-2xx status (detail has the code)
    BODY_TOO_LARGE = "body_too_large"        # Content-Length or the bytes read passed the cap
    DOWNLOAD_DEADLINE = "download_deadline"  # the whole download (every hop, every wait) took too long
    ROBOTS_DISALLOWED = "robots_disallowed"  # X-Robots-Tag: noai / noindex / ...
    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"            # e.g. HTML served as .jpg
    DECODE_ERROR = "decode_error"            # truncated or corrupt image data
    IMAGE_TOO_LARGE = "image_too_large"      # decompression bomb guard
    SHARD_FAILED = "shard_failed"            # img2dataset gave up on the whole shard
    OTHER = "other"                          # anything unrecognised; the detail says what


INGEST_REJECTED_SCHEMA = pa.schema([("part", pa.int32()), ("row", pa.int64()), ("url", pa.string()),
                                    ("reason", pa.string()), ("detail", pa.string())])
INGEST_REJECTED_FIELDS = list(INGEST_REJECTED_SCHEMA.names)


# ---------------------------------------------------------------- the eval-match row

NO_DISTANCE = -1  # proposed by the embedding alone: no pHash distance

MATCH_SCHEMA = pa.schema([
    ("key", pa.string()),          # the corpus pair's key, as in every pair record
    ("eval_set", pa.string()),
    ("eval_split", pa.string()),
    ("eval_key", pa.string()),
    ("signal", pa.string()),       # phash, mirror, embedding, phash+embedding, mirror+embedding
    ("distance", pa.int32()),      # pHash Hamming bits (mirror's when that was closer); NO_DISTANCE
    ("cosine", pa.float32()),      # locked-tower cosine; NaN when the embedding did not propose it
    ("confirmed", pa.bool_()),     # geometric verification said yes
    ("undecided", pa.bool_()),     # verification could not decide (unreadable image, ...)
    ("verification", pa.string()),  # what verification saw, in words
    ("flagged", pa.bool_()),       # confirmed or undecided (every candidate when verification is off)
])
MATCH_FIELDS = tuple(MATCH_SCHEMA.names)
_MATCH_DTYPES = {"distance": "int32", "cosine": "float32", "confirmed": bool, "undecided": bool, "flagged": bool}


def match_frame(frame):
    """``frame`` (pandas) with the contract's columns first, in its types; a missing column is an error."""
    missing = [c for c in MATCH_FIELDS if c not in frame.columns]
    if missing:
        raise ValueError(f"eval-match rows lack {missing} (infra.contract.MATCH_SCHEMA)")
    extra = [c for c in frame.columns if c not in MATCH_FIELDS]
    out = frame[list(MATCH_FIELDS) + extra].copy()
    for column, dtype in _MATCH_DTYPES.items():
        out[column] = out[column].astype(dtype)
    for column in ("key", "eval_set", "eval_split", "eval_key", "signal", "verification"):
        out[column] = out[column].astype(object)
    return out.reset_index(drop=True)


def write_matches(frame, path) -> None:
    """Write eval-match rows atomically as parquet, the contract's columns typed by MATCH_SCHEMA."""
    import pyarrow.parquet as pq

    frame = match_frame(frame)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.cast(pa.schema([MATCH_SCHEMA.field(n) if n in MATCH_FIELDS else table.schema.field(n)
                                  for n in table.schema.names]))
    with replacing(path) as tmp:
        pq.write_table(table, tmp)


# ---------------------------------------------------------------- the manifests

class ManifestError(ValueError):
    """A manifest file that is not the shape this litflow writes (names the file and the field)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Manifest(_Model):
    """A manifest file: validated when built and when read, written as sorted, indented JSON."""

    FILE: ClassVar[str] = ""  # the file name in its folder

    def to_json(self) -> str:
        # python mode + json.dumps, not pydantic's JSON mode: that would write NaN (a metric of an
        # empty language, say) as null
        return json.dumps(self.model_dump(by_alias=True), indent=2, sort_keys=True, default=str) + "\n"

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / self.FILE
        write_text_atomic(path, self.to_json())
        return path

    @classmethod
    def read(cls, folder_or_file: str | Path):
        path = Path(folder_or_file)
        if path.name != cls.FILE:
            path = path / cls.FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: no {cls.FILE}")
        return cls.parse(json.loads(path.read_text()), where=str(path))

    @classmethod
    def parse(cls, data: dict, where: str = ""):
        try:
            return cls.model_validate(data)
        except AccountingError as error:
            raise AccountingError(f"{where or cls.FILE}: {error}") from None
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}"
                                 for e in error.errors()[:5])
            raise ManifestError(f"{where or cls.FILE}: not a {cls.FILE} this litflow reads: {problems}") from None



class StageCount(_Model):
    in_: int = Field(alias="in")
    out: int
    rejected: dict[str, int]


class LanguageCounts(_Model):
    kept: dict[str, int]
    rejected: dict[str, dict[str, int]]  # language -> reason -> pairs


class CorpusDuplicates(_Model):
    exact: int
    near: int


class CuratedShard(_Model):
    name: str      # NAME.tar under shards/, with NAME.parquet beside it
    samples: int
    sha256: str


class CorpusManifest(Manifest):
    """``corpus.json``: what a curation run did, counted from what it wrote. Nothing in it
    depends on time, so two runs on the same input and config write the same bytes."""

    FILE: ClassVar[str] = "corpus.json"
    preset: str | None
    config: dict[str, Any]            # curation.config.CurationConfig, whole
    input: str
    inputs: int
    kept: int
    rejected: dict[str, int]          # CurationReason -> pairs
    accounting: str
    stages: dict[str, StageCount]
    rare_tokens_k: int | None
    rare_tokens_threshold_df: int | None
    valid_pairs: int | None
    languages: LanguageCounts
    hash_settings: dict[str, Any]     # dedup.phash.HashSettings
    eval_dedup_verify: dict[str, Any] | None  # dedup.verify.VerifyRules; None: pHash alone
    eval_duplicates: dict[str, dict[str, int]]  # eval set -> split -> pairs removed
    corpus_duplicates: CorpusDuplicates
    shards: list[CuratedShard]
    versions: dict[str, str | None]
    code_revision: str | None

    @model_validator(mode="after")
    def _accounts(self):
        unknown = sorted(set(self.rejected) - {r.value for r in CurationReason})
        if unknown:
            raise ValueError(f"rejected by unknown reasons {unknown}")
        rejected = sum(self.rejected.values())
        if self.kept + rejected != self.inputs:
            raise AccountingError(f"inputs {self.inputs} != kept {self.kept} + rejected {rejected}")
        in_shards = sum(s.samples for s in self.shards)
        if in_shards != self.kept:
            raise AccountingError(f"the shards hold {in_shards} samples, kept is {self.kept}")
        return self


class RetryTally(_Model):
    rows: int
    recovered: int
    failed: dict[str, int]


class IngestPart(_Model):
    part: int
    file: str
    rows_in: int
    downloaded: int
    failed: dict[str, int]            # IngestReason -> rows
    shards: list[str]
    retries: list[RetryTally] = []  # per retry round: this part's rows tried, recovered, failed

    @model_validator(mode="after")
    def _accounts(self):
        failed = sum(self.failed.values())
        if self.downloaded + failed != self.rows_in:
            raise AccountingError(f"part {self.part} ({self.file}): rows_in={self.rows_in} but downloaded "
                                  f"{self.downloaded} + failed {failed}")
        return self


class RetryRound(_Model):
    round: int
    rows: int
    recovered: int
    failed_again: dict[str, int]
    shards: list[str]


class IngestReport(Manifest):
    """``ingest.json``: the ingest stage report; every row of every part accounted."""

    FILE: ClassVar[str] = "ingest.json"
    stage: Literal["ingest"] = "ingest"
    input: str
    output: str
    rows_in: int
    downloaded: int
    failed: dict[str, int]
    parts: list[IngestPart]
    shards: list[str]
    retries: list[RetryRound]
    hosts: dict[str, Any]             # curation.host_report.HostTally.report()
    url_policy: dict[str, Any]
    fetch_policy: dict[str, Any]
    config: dict[str, Any]            # curation.ingest_config.IngestConfig, whole
    elapsed_s: float
    img2dataset_s: float
    versions: dict[str, str | None]
    code_revision: str | None

    @model_validator(mode="after")
    def _accounts(self):
        unknown = sorted(set(self.failed) - {r.value for r in IngestReason})
        if unknown:
            raise ValueError(f"failed for unknown reasons {unknown}")
        failed = sum(self.failed.values())
        if self.downloaded + failed != self.rows_in:
            raise AccountingError(f"rows_in={self.rows_in} but downloaded + failed = {self.downloaded + failed}")
        if (sum(p.rows_in for p in self.parts), sum(p.downloaded for p in self.parts)) != (self.rows_in, self.downloaded):
            raise AccountingError("the parts' rows_in / downloaded do not sum to the totals")
        return self


EVAL_INDEX_FORMAT = 1


class UnreadableImage(_Model):
    key: str
    error: str


class IndexedSplit(_Model):
    role: str                         # dedup.modes: which modes remove its duplicates
    source: str                       # where its images come from, in words
    digest: str                       # of the hash settings and every image's key and bytes' identity
    file: str                         # splits/SET__SPLIT.parquet
    images: int
    hashed: int
    unreadable: list[UnreadableImage]
    features: str | None = None       # features/SET__SPLIT: its images' verification keypoints (dedup.feature_store)


class IndexedSet(_Model):
    description: str
    splits: dict[str, IndexedSplit]


class EvalIndexManifest(Manifest):
    """``index.json``: an eval index's hash settings and, per set and split, what was hashed."""

    FILE: ClassVar[str] = "index.json"
    format: int
    settings: dict[str, Any]          # dedup.phash.HashSettings
    settings_id: str
    sets: dict[str, IndexedSet]
    features_id: str | None = None    # dedup.verify.features_id the keypoints were made under (None: none stored)

    @model_validator(mode="before")
    @classmethod
    def _format(cls, data):
        if isinstance(data, dict) and data.get("format") != EVAL_INDEX_FORMAT:
            raise ValueError(f"index format {data.get('format')}, this litflow reads {EVAL_INDEX_FORMAT}")
        return data


METRICS_FORMAT = 1


class EvalMetrics(Manifest):
    """``metrics.json``: every number of one evaluation of one model. Each set's result is
    task-specific (classification: per prompt set top-1/top-5/balanced; retrieval: R@k both ways,
    per language) and kept as the evaluation wrote it."""

    FILE: ClassVar[str] = "metrics.json"
    format: Literal[1] = METRICS_FORMAT
    model: dict[str, Any]             # the model's identity: run, step, towers, fingerprints
    split: str
    sets: dict[str, dict[str, Any]]
    evalset_files: list[str]
    headline: float | None
    headline_rule: str
    environment: dict[str, Any]
    seconds: float
