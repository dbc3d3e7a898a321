"""The per-shard work of the curation pipeline, free of Beam so that a test can run it alone.

The pipeline (:mod:`curation.pipeline`) reads every raw shard in two or three passes, and
only small facts travel between them — never image bytes:

1. :func:`examine_shard` decodes, hashes and normalises each sample (:func:`curation.checks.examine`),
   writes the shard's *facts* (every pair-record field, the per-record failures, no image) to
   ``_work/facts/STEM.parquet``, and returns the small :class:`Fact` tuples the corpus-wide
   rules aggregate over.
2. :func:`decide_shard` reads the facts back, adds the corpus-wide findings for this shard
   (duplicate key, texts per image, images per text, rare tokens), gives each record its one
   reason (:func:`curation.checks.attribute`), tags the kept captions' languages in one batch
   and matches kept images against the eval index (reading the raw shard again for the
   bytes, only when an index is given).
3. :func:`write_shard_outputs` applies the corpus-duplicate drops (when asked for), reads the
   kept images' bytes — each at the offset examining recorded in the facts, one tar header
   checked before it; the whole raw shard as a stream only when something is not where the
   facts say — and writes the curated shard(s)
   ``shards/STEM[_C].tar`` + ``.parquet``, the rejections ``rejected/STEM.parquet`` and the
   counts ``_counts/STEM.json``. Without corpus de-duplication, passes 2 and 3 run as one.

Memory: one raw shard's facts and decided records (a few hundred bytes each, bounded by the
raw shard's size); the grey pixels of images waiting for a batched pHash, at most
:data:`UNHASHED_BYTES`; and one curated shard's bytes (bounded by ``output.shard_size``); one
sample's raw bytes at a time while reading. Nothing grows with the corpus.

A raw shard that is gone or changed between passes fails the run with its path: the facts
say which key each position held, and a re-read that disagrees is not silently curated.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections import Counter, defaultdict
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation import storage
from curation.checks import RULE_ORDER, VALIDITY, attribute, examine, finish_hashes, image_bytes, output_image, tag_languages
from curation.config import CurationConfig
from curation.shards import OFFSETS, read_member_at, read_shard, shard_bytes
from curation.text import gram_id, unigrams_and_bigrams
from dedup.evalsets import image_member
from dedup.intra import drop_detail
from infra.contract import KEPT, PAIR_FIELDS, PAIR_SCHEMA, REJECTED
from infra.contract import CurationReason as R

WORK_DIR = "_work"
COUNTS_DIR = "_counts"
FACTS_SCHEMA = pa.schema(list(PAIR_SCHEMA) + [
    pa.field("index", pa.int64()), pa.field("failures", pa.string()), pa.field("reencoded", pa.bool_()),
    pa.field("text_key", pa.string()), pa.field("gram_text", pa.string()),
    pa.field("image_offset", pa.int64()), pa.field("image_size", pa.int64())])  # where the image's bytes are in the raw tar


UNHASHED_BYTES = 16 * 2**20
"""Grey pixels waiting for their shard's batched pHash are hashed once they pass this many
bytes (1,000 drafted 64-px JPEGs hold 4 MB; a shard of large PNGs is hashed in several batches)."""


class RawShardChanged(RuntimeError):
    """A raw shard is gone, or holds other samples, since it was examined."""


def value_id(value: str | None) -> bytes | None:
    """A 16-byte id of a content hash or text key: what the corpus rules count and join on
    (a 64-hex sha256 or a long caption would cost 3-10x more in every shuffle; 128 bits keep
    collisions out of reach: about 1e-20 for a billion values)."""
    return None if value is None else hashlib.blake2b(value.encode("utf-8"), digest_size=16).digest()


def packed_gram_ids(ids) -> bytes:
    """Gram ids (:func:`curation.text.gram_id`) as a rare-token finding carries them."""
    return np.asarray(ids, dtype="<u8").tobytes()


def gram_ids_of(packed: bytes) -> list[int]:
    """The gram ids of :func:`packed_gram_ids`'s bytes."""
    return np.frombuffer(packed, dtype="<u8").tolist()


class Fact(NamedTuple):
    """What the corpus-wide rules need of one sample (no image, no caption)."""

    key: str
    shard: int                 # the raw shard's number in the run (its rank by path)
    index: int                 # the sample's position in its raw shard
    valid: bool                # read and decoded: counts toward corpus statistics
    image_id: bytes | None     # value_id(sha256)
    text_id: bytes | None      # value_id(case-folded normalised caption), for text frequency
    gram_text: str | None      # the caption's tokens joined by spaces; None: no tokens

    @classmethod
    def of(cls, row: dict, shard: int) -> "Fact":
        """The fact of a facts-file row."""
        return cls(row["key"], shard, row["index"], not _invalid(row), value_id(row["sha256"]),
                   value_id(row["text_key"]), row["gram_text"])


def _invalid(row: dict) -> bool:
    return any(R(f) in VALIDITY for f in json.loads(row["failures"]))


class Finding(NamedTuple):
    """A corpus-wide rule's finding for one raw shard: its pairs with ``value`` (a position
    for ``duplicate_key``, else a content hash, a text key or a gram) break ``reason``."""

    reason: str
    value: object
    detail: str


def _raw_samples(path: str) -> Iterator[tuple[int, dict]]:
    """(index, raw sample) of a raw shard. A tar that breaks off yields what was readable,
    then one sample carrying ``__error__`` (an ``unreadable_shard`` rejection), so the broken
    shard is counted and named instead of crashing the run or vanishing."""
    name = storage.stem(path)
    index = -1
    try:
        with storage.open_read(path) as handle:
            for index, raw in enumerate(read_shard(path, fileobj=handle, offsets=True)):
                yield index, raw
    except (tarfile.TarError, OSError, EOFError, ValueError) as err:
        yield index + 1, {"__key__": f"{name}@{index + 1}",
                          "__error__": f"{path}: unreadable after {index + 1} samples: {type(err).__name__}: {err}"}


def facts_path(out_dir: str, raw_path: str) -> str:
    return storage.join(out_dir, WORK_DIR, "facts", storage.stem(raw_path) + ".parquet")


def examine_shard(shard: int, path: str, out_dir: str, config: CurationConfig) -> list[Fact]:
    """Pass 1: examine every sample of one raw shard; write its facts; return the small ones."""
    rows, facts = [], []
    name = storage.stem(path)
    examined, unhashed, unhashed_bytes = [], [], 0
    for index, raw in _raw_samples(path):
        candidate = examine(raw, name, index, config, defer_hash=True)
        candidate.image = None  # only the facts are kept: the bytes are re-read at their offset
        examined.append((index, candidate, raw.get(OFFSETS, {}).get(image_member(raw), (None, None))))
        if candidate.grey is not None:
            unhashed.append(candidate)
            unhashed_bytes += candidate.grey.nbytes
        if unhashed_bytes > UNHASHED_BYTES:
            finish_hashes(unhashed)
            unhashed, unhashed_bytes = [], 0
    finish_hashes(unhashed)  # pHashes in batches: a shard's at once when its images are small
    for index, candidate, (offset, size) in examined:
        # text_key is " ".join(tokens) when the caption has tokens: the grams are rebuilt from it
        fact = Fact(candidate.record["key"], shard, index, candidate.valid, value_id(candidate.record["sha256"]),
                    value_id(candidate.text_key), candidate.text_key if candidate.grams else None)
        rows.append({**candidate.record, "index": index, "reencoded": candidate.reencoded,
                     "failures": json.dumps(candidate.failures, sort_keys=True),
                     "text_key": candidate.text_key, "gram_text": fact.gram_text,
                     "image_offset": offset, "image_size": size})
        facts.append(fact)
    storage.write_parquet(facts_path(out_dir, path), rows, FACTS_SCHEMA)
    return facts


def _read_facts(out_dir: str, path: str) -> list[dict]:
    return storage.read_parquet(facts_path(out_dir, path)).to_pylist()


_FACT_COLUMNS = ["key", "index", "failures", "sha256", "text_key", "gram_text"]  # what Fact.of reads


def facts_at(shard: int, path: str, out_dir: str, indices) -> list[Fact]:
    """The facts of the samples at ``indices`` of one raw shard, read back from its facts file
    (only the columns a fact needs, and only the wanted rows made Python objects)."""
    table = storage.read_parquet(facts_path(out_dir, path), columns=_FACT_COLUMNS)
    table = table.filter(pc.is_in(table["index"], pa.array(sorted(set(indices)), pa.int64())))
    return [Fact.of(row, shard) for row in table.to_pylist()]


def _findings_by_reason(findings: Iterable[Finding]) -> dict[str, dict]:
    """{reason: {value: detail}}: a shard's findings indexed once, looked up per record. A
    rare-token finding's value is a packed array of gram ids (curation.corpus_rules): each
    id becomes a value of its own."""
    by_reason: dict[str, dict] = defaultdict(dict)
    for finding in findings:
        if finding.reason == R.TEXT_RARE_TOKENS.value:
            by_reason[finding.reason].update(dict.fromkeys(gram_ids_of(finding.value), ""))
        else:
            by_reason[finding.reason][finding.value] = finding.detail
    return by_reason


# the rare-token rule is attributed after every other rule a record can fail before language
# tagging (checks.RULE_ORDER): a record failing any of those is rejected for that one, so its
# grams need not be looked up
_BEFORE_RARE = {r.value for r in RULE_ORDER[:RULE_ORDER.index(R.TEXT_RARE_TOKENS)]}


def _corpus_failures(record: dict, by_reason: dict[str, dict]) -> dict[str, str]:
    """The corpus-wide rules but the rare-token one that ``record`` breaks, by its shard's
    findings (:func:`_findings_by_reason`)."""
    failures = {}
    if record["index"] in by_reason[R.DUPLICATE_KEY.value]:
        failures[R.DUPLICATE_KEY.value] = by_reason[R.DUPLICATE_KEY.value][record["index"]]
    image_id, text_id = value_id(record["sha256"]), value_id(record["text_key"])
    if image_id in by_reason[R.IMAGE_TOO_MANY_TEXTS.value]:
        failures[R.IMAGE_TOO_MANY_TEXTS.value] = by_reason[R.IMAGE_TOO_MANY_TEXTS.value][image_id]
    if text_id in by_reason[R.TEXT_TOO_COMMON.value]:
        failures[R.TEXT_TOO_COMMON.value] = by_reason[R.TEXT_TOO_COMMON.value][text_id]
    return failures


def _rare_tokens_failure(record: dict, by_reason: dict[str, dict], rare_k: int | None) -> dict[str, str]:
    """The rare-token rule's failure of ``record`` ({} or one entry), by its shard's findings."""
    rare_grams = by_reason[R.TEXT_RARE_TOKENS.value]
    if not rare_grams or record["gram_text"] is None:
        return {}
    rare = sorted(g for g in unigrams_and_bigrams(record["gram_text"].split(" ")) if gram_id(g) in rare_grams)
    return {R.TEXT_RARE_TOKENS.value: f"outside the top {rare_k}: {rare[:3]}"} if rare else {}


def _images_at(path: str, records: list[dict]) -> dict[int, bytes] | None:
    """The kept images read straight at the offsets examining recorded (one header and the
    data each, no other header parsed); None when any is not where the facts say, or was not
    located (a compressed tar): then the caller reads the tar as a stream, and that read
    decides whether the shard changed."""
    if any(r["image_offset"] is None for r in records):
        return None
    found: dict[int, bytes] = {}
    try:
        with storage.open_read(path) as handle:
            for r in sorted(records, key=lambda r: r["image_offset"]):
                data = read_member_at(handle, r["image_offset"], r["image_size"], r["key"])
                if data is None:
                    return None
                found[r["index"]] = data
    except OSError:
        return None
    return found


def _images_of(path: str, records: list[dict]) -> dict[int, bytes]:
    """The raw image bytes of ``records`` (facts or decided rows), by index."""
    if not records:
        return {}
    found = _images_at(path, records)
    return found if found is not None else _images_by_index(path, {r["index"]: r["key"] for r in records})


def _images_by_index(path: str, wanted: dict[int, str]) -> dict[int, bytes]:
    """The raw image bytes at the ``wanted`` positions ({index: key}), read in one stream
    that stops after the last one (so a tar broken further on is not read into)."""
    found: dict[int, bytes] = {}
    if not wanted:
        return found
    last = max(wanted)
    try:
        with storage.open_read(path) as handle:
            for index, raw in enumerate(read_shard(path, fileobj=handle)):
                if index in wanted:
                    if raw["__key__"] != wanted[index]:
                        raise RawShardChanged(f"{path}: sample {index} is now {raw['__key__']!r}, was "
                                              f"{wanted[index]!r} when examined; re-run the curation")
                    found[index] = image_bytes(raw)
                if index >= last:
                    break
    except (OSError, tarfile.TarError, EOFError) as err:
        raise RawShardChanged(f"{path}: raw shard unreadable since it was examined "
                              f"({type(err).__name__}: {err}); re-run the curation") from err
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise RawShardChanged(f"{path}: {len(missing)} sample(s) examined earlier are gone "
                              f"(first: {wanted[missing[0]]!r}); re-run the curation")
    return found


def decide_shard(path: str, out_dir: str, findings: Iterable[Finding], rare_k: int | None,
                 config: CurationConfig, eval_matcher=None) -> list[dict]:
    """Pass 2: every record of one raw shard with its final status (input order)."""
    facts = _read_facts(out_dir, path)
    by_reason = _findings_by_reason(findings)
    decided = []
    for fact in facts:
        failures = json.loads(fact.pop("failures"))
        # a record that was not read or decoded fails on that first; the corpus rules are
        # counted over, and so only speak of, valid records
        failures.update(_corpus_failures(fact, by_reason))
        if _BEFORE_RARE.isdisjoint(failures):
            failures.update(_rare_tokens_failure(fact, by_reason, rare_k))
        decided.append(attribute(fact, failures))
    decided = tag_languages(decided, config)
    if eval_matcher is not None:
        images = _images_of(path, [r for r in decided if r["status"] == KEPT and r["phash"] is not None])
        decided = [eval_matcher(r, images[r["index"]]) if r["index"] in images else r for r in decided]
    return decided


def decided_path(out_dir: str, raw_path: str) -> str:
    return storage.join(out_dir, WORK_DIR, "decided", storage.stem(raw_path) + ".parquet")


def save_decided(path: str, out_dir: str, decided: list[dict]) -> None:
    storage.write_parquet(decided_path(out_dir, path), decided, FACTS_SCHEMA)


def load_decided(path: str, out_dir: str) -> list[dict]:
    return storage.read_parquet(decided_path(out_dir, path)).to_pylist()


def apply_drops(decided: list[dict], drops: Iterable[tuple[int, str, int | None, str]]) -> list[dict]:
    """Reject kept records named in ``drops`` ((index, kept key, pHash distance, kind))."""
    by_index = {index: (kept_key, distance, kind) for index, kept_key, distance, kind in drops}
    out = []
    for record in decided:
        found = by_index.get(record["index"]) if record["status"] == KEPT else None
        if found is not None:
            record = {**record, "status": REJECTED, "reason": R.CORPUS_DUPLICATE.value, "detail": drop_detail(*found)}
        out.append(record)
    return out


def curated_names(stem: str, kept: int, shard_size: int) -> list[str]:
    """Curated shard names for a raw shard with ``kept`` pairs: ``STEM`` when they fit in one
    shard of ``shard_size``, else ``STEM_00``, ``STEM_01``, …"""
    chunks = -(-kept // shard_size)
    if chunks <= 1:
        return [stem] if kept else []
    width = max(2, len(str(chunks - 1)))
    return [f"{stem}_{c:0{width}d}" for c in range(chunks)]


def _contract(record: dict) -> dict:
    return {name: record.get(name) for name in PAIR_FIELDS}


def write_shard_outputs(path: str, out_dir: str, decided: list[dict], config: CurationConfig) -> dict:
    """Pass 3: curated shard(s), rejections and counts of one raw shard; returns the counts."""
    stem = storage.stem(path)
    kept = sorted((r for r in decided if r["status"] == KEPT), key=lambda r: r["key"])
    # key order (then position) for rejections too: the same samples in another order within a
    # raw shard (img2dataset's threads finish in any order) give the same bytes
    rejected = [_contract(r) for r in sorted((r for r in decided if r["status"] != KEPT),
                                             key=lambda r: (r["key"] or "", r["index"]))]
    images = _images_of(path, kept)
    shard_size = config.output.shard_size
    shards = []
    for chunk, name in enumerate(curated_names(stem, len(kept), shard_size)):
        part = kept[chunk * shard_size:(chunk + 1) * shard_size]
        samples = [(_contract(r), output_image(images[r["index"]], r["reencoded"], config)) for r in part]
        data, records = shard_bytes(samples)
        # the manifest first, the tar last: a tar's presence means its shard is complete
        storage.write_parquet(storage.join(out_dir, "shards", f"{name}.parquet"), records, PAIR_SCHEMA)
        storage.write_atomic(storage.join(out_dir, "shards", f"{name}.tar"), data)
        shards.append({"name": f"{name}.tar", "samples": len(records), "sha256": _sha256(data)})
    storage.write_parquet(storage.join(out_dir, "rejected", f"{stem}.parquet"), rejected, PAIR_SCHEMA)
    counts = shard_counts(stem, decided, shards)
    storage.write_json(storage.join(out_dir, COUNTS_DIR, f"{stem}.json"), counts)
    return counts


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shard_counts(stem: str, decided: list[dict], shards: list[dict]) -> dict:
    """Everything the manifest sums, for one raw shard (small: bounded by the reasons,
    languages and eval splits, not by the shard)."""
    kept = [r for r in decided if r["status"] == KEPT]
    rejected = [r for r in decided if r["status"] != KEPT]
    by_lang_reason: dict[str, Counter] = defaultdict(Counter)
    for r in rejected:
        by_lang_reason[r["lang"] or "none"][r["reason"]] += 1
    eval_dups: dict[str, Counter] = defaultdict(Counter)
    corpus_dups: Counter = Counter()
    for r in rejected:
        if r["reason"] == R.EVAL_DUPLICATE.value:
            eval_dups[r["eval_set"]][r["eval_split"]] += 1
        elif r["reason"] == R.CORPUS_DUPLICATE.value:
            corpus_dups[str(r["detail"]).split(" ", 1)[0]] += 1
    return {
        "raw_shard": stem,
        "inputs": len(decided),
        "kept": len(kept),
        "rejected": dict(sorted(Counter(r["reason"] for r in rejected).items())),
        "languages_kept": dict(sorted(Counter(r["lang"] or "none" for r in kept).items())),
        "languages_rejected": {lang: dict(sorted(c.items())) for lang, c in sorted(by_lang_reason.items())},
        "eval_duplicates": {s: dict(sorted(c.items())) for s, c in sorted(eval_dups.items())},
        "corpus_duplicates": dict(sorted(corpus_dups.items())),
        "shards": shards,
    }


__all__ = ["COUNTS_DIR", "FACTS_SCHEMA", "Fact", "RawShardChanged", "Finding", "WORK_DIR", "apply_drops",
           "curated_names", "decide_shard", "examine_shard", "facts_at", "gram_ids_of", "packed_gram_ids", "value_id", "load_decided", "save_decided", "shard_counts",
           "write_shard_outputs"]
