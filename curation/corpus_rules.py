"""The corpus-wide curation rules as keyed Beam aggregations over small facts.

Input: the :class:`curation.shard_passes.Fact` of every sample (key, position, validity,
content hash, text key, tokens — no image, no caption). Output: *findings*
``(shard, (reason, value, detail))`` — "in this raw shard, pairs with this content hash /
text / gram (or at this position) break this rule" — which go back to the raw shard (a
CoGroupByKey on the shard number) and are applied there to its records. Nothing corpus-sized
is gathered on one worker. Statistics count *valid first copies* (read and decoded, first
copy of their key): every valid fact counts once, and each valid copy that must not count is
read back from its shard's facts and counts -1.

**Packed tables.** Each raw shard turns its facts into small numpy tables (one row per
distinct value in the shard: :data:`KEY_ROW`, :data:`IMAGE_ROW`, :data:`PAIR_ROW`,
:data:`GRAM_ROW`) and sends each table through its shuffle as one ``bytes`` value per
*bucket* (a value's id modulo the bucket count), so a shuffle carries a few hundred elements
per raw shard instead of one per value. Why: the local runner keeps every shuffled element
as Python objects (~200 bytes for a value that packs into 16–40), and with one element per
(value, shard) that was most of its memory (~2.5 KB a pair with ALIGN's rules). A bucket's
group is unpacked in one worker and decided with numpy. Keys, content hashes and texts are
16-byte ids (:func:`curation.shard_passes.value_id`), grams 8-byte ids
(:func:`curation.text.gram_id`: at 10^10 distinct grams about 3 pairs share an id, and such
a pair only has its document frequencies summed).

The rules, each a GroupByKey on the bucket:

* **duplicate keys** — one row per sample (key id, shard, index, valid). Of a key's copies
  the first (lowest shard number, then index) is kept; later ones are ``duplicate_key``, and
  the later *valid* ones are the copies the statistics must not count (read back from their
  facts and counted -1 by the other tables).
* **texts per image** — each raw shard counts its valid pairs per content hash. Summed over
  shards (and the corrections): over ``image.max_texts_per_image`` → a finding for every
  shard that holds the hash.
* **images per text** — one row per (text, content hash) per shard with its count, bucketed
  by text, so a text's rows are in one group: per text, the number of hashes with a positive
  count; over the limit → a finding for every shard that holds the text.
* **rare tokens** — each raw shard counts its unigrams/bigrams; a gram's document frequency
  (df) is the sum of its counts. The K most frequent are found without gathering the gram
  counts: the *histogram* of df values (how many grams have df = d) is the only thing
  combined globally, and it has at most one entry per distinct df value — fewer than
  sqrt(2 × Σdf) entries, a few thousand for a billion pairs. Tie rule
  (:func:`frequent_threshold`): the frequent set is every gram with df ≥ T, for the smallest
  T that keeps it at most K grams; grams tied at the boundary are all in or all out, never
  split by spelling. A gram with 0 < df < T rejects every valid pair holding it
  (``text_rare_tokens``); the finding is one packed array of rare gram ids per (bucket, shard).

Memory: a worker holds one raw shard's tables, or one bucket's group. The bucket count
(:func:`bucket_count`) is at least 64 and grows with the raw shards so that a group stays
near 2^20 rows (16–40 bytes each) whatever the corpus size — for raw shards of about 1,000
pairs (litflow's ingest default); with img2dataset's 10,000 a group is up to 10× that, still
a bounded ~0.4 GB at most. The elements crossing a shuffle are at most (raw shards ×
buckets), and their bytes are the rows' bytes. Runners that stream
group values (Dataflow, Flink, Spark) never hold a group whole. Side inputs are scalars only:
the number of valid pairs (for K) and T.
"""

from __future__ import annotations

from collections import Counter

import apache_beam as beam
import numpy as np

from curation.config import CurationConfig
from curation.shard_passes import facts_at, packed_gram_ids, value_id
from curation.text import gram_id, unigrams_and_bigrams
from infra.contract import CurationReason as R


def frequent_threshold(histogram: dict[int, int], k: int) -> int:
    """The smallest df T such that at most ``k`` grams have df ≥ T (``histogram``: df → grams).

    Everything with df ≥ T is frequent. Grams tied at the boundary df are taken whole or not
    at all, so the frequent set has at most ``k`` grams and never depends on spelling.
    """
    threshold, total = max(histogram, default=0) + 1, 0
    for df in sorted(histogram, reverse=True):
        if total + histogram[df] > k:
            break
        total += histogram[df]
        threshold = df
    return threshold


# ---- packed tables -----------------------------------------------------------------------

_ID = [("lo", "<u8"), ("hi", "<u8")]  # a 16-byte id as two little-endian words
KEY_ROW = np.dtype(_ID + [("shard", "<u4"), ("index", "<u4"), ("valid", "u1")])
IMAGE_ROW = np.dtype(_ID + [("count", "<i4"), ("shard", "<u4")])
PAIR_ROW = np.dtype(_ID + [("image_lo", "<u8"), ("image_hi", "<u8"), ("count", "<i4"), ("shard", "<u4")])
GRAM_ROW = np.dtype([("lo", "<u8"), ("count", "<i4"), ("shard", "<u4")])
NO_SHARD = (1 << 32) - 1  # a correction's "shard": it holds nothing

_MIN_BUCKETS = 64
_GROUP_ROWS = 1 << 20          # the rows a bucket's group should stay near
ROWS_PER_SHARD = {"keys": 1024, "images": 1024, "pairs": 1024,
                  "grams": 8192}  # per 1,000-pair raw shard, generously (synthetic Zipf captions: ~4,100 grams)


def bucket_count(raw_shards: int, rows_per_shard: int) -> int:
    """How many buckets a table of ``rows_per_shard`` rows from each of ``raw_shards`` is spread over."""
    return max(_MIN_BUCKETS, -(-raw_shards * rows_per_shard // _GROUP_ROWS))


def _words(ids: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """16-byte ids → (lo, hi) little-endian words."""
    both = np.frombuffer(b"".join(ids), dtype="<u8").reshape(-1, 2) if ids else np.zeros((0, 2), "<u8")
    return both[:, 0], both[:, 1]


def _id_bytes(lo, hi) -> bytes:
    return int(lo).to_bytes(8, "little") + int(hi).to_bytes(8, "little")


def _table(dtype: np.dtype, **columns) -> np.ndarray:
    rows = np.zeros(len(next(iter(columns.values()))), dtype=dtype)
    for name, values in columns.items():
        rows[name] = values
    return rows


def _unpack(bucket_group, dtype: np.dtype) -> np.ndarray:
    _, packed = bucket_group
    return np.concatenate([np.frombuffer(p, dtype=dtype) for p in packed])


def _runs(*columns, group: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(order, starts): the rows sorted by ``columns`` (first most significant), and where each
    run of rows equal in the first ``group`` columns (default: all) starts in that order."""
    order = np.lexsort(columns[::-1])
    change = np.zeros(max(len(order) - 1, 0), dtype=bool)
    for column in columns[:group]:
        ordered = column[order]
        change |= ordered[1:] != ordered[:-1]
    return order, np.flatnonzero(np.r_[True, change]) if len(order) else np.zeros(0, dtype=np.int64)


def _run_slices(order: np.ndarray, starts: np.ndarray, wanted=None):
    """The row numbers of each run (of the runs where ``wanted``, a mask over runs, is true)."""
    ends = np.r_[starts[1:], len(order)]
    picked = np.flatnonzero(wanted) if wanted is not None else range(len(starts))
    for run in picked:
        yield order[starts[run]:ends[run]]


def _run_lengths(order: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.diff(np.r_[starts, len(order)])


def _by_bucket(rows: np.ndarray, buckets: int):
    """(bucket, the rows of that bucket as bytes) for a packed table."""
    bucket = rows["lo"] % np.uint64(buckets)
    for run in _run_slices(*_runs(bucket)):  # rows keep their order within a bucket
        yield int(bucket[run[0]]), rows[run].tobytes()


def _holding(rows: np.ndarray) -> list[int]:
    """The shards among ``rows`` that hold the value (a counted row of their own)."""
    return sorted(set(rows["shard"][(rows["shard"] != NO_SHARD) & (rows["count"] > 0)].tolist()))


def _valid(shard_facts):
    return [f for f in shard_facts if f.valid]


def _grams(gram_text: str | None):
    return unigrams_and_bigrams(gram_text.split(" ")) if gram_text is not None else ()


# per raw shard (and per correction), in the worker ------------------------------------------

def _key_rows(shard_facts, buckets: int):
    lo, hi = _words([value_id(f.key) for f in shard_facts])
    yield from _by_bucket(_table(KEY_ROW, lo=lo, hi=hi, shard=[f.shard for f in shard_facts],
                                 index=[f.index for f in shard_facts], valid=[f.valid for f in shard_facts]), buckets)


def _image_rows(facts, count: int, shard: int, buckets: int):
    counts = Counter(f.image_id for f in facts)
    lo, hi = _words(list(counts))
    yield from _by_bucket(_table(IMAGE_ROW, lo=lo, hi=hi, count=[count * n for n in counts.values()], shard=shard), buckets)


def _pair_rows(facts, count: int, shard: int, buckets: int):
    counts = Counter((f.text_id, f.image_id) for f in facts)
    lo, hi = _words([t for t, _ in counts])
    image_lo, image_hi = _words([i for _, i in counts])
    yield from _by_bucket(_table(PAIR_ROW, lo=lo, hi=hi, image_lo=image_lo, image_hi=image_hi,
                                 count=[count * n for n in counts.values()], shard=shard), buckets)


def _gram_rows(facts, count: int, shard: int, buckets: int):
    counts = Counter(g for f in facts for g in _grams(f.gram_text))
    yield from _by_bucket(_table(GRAM_ROW, lo=[gram_id(g) for g in counts],
                                 count=[count * n for n in counts.values()], shard=shard), buckets)


def _counted(rows_of, buckets: int):
    """A shard's valid facts as +1 rows of its own (``rows_of``: one of the table builders)."""
    def rows(shard_facts):
        valid = _valid(shard_facts)
        if valid:
            yield from rows_of(valid, 1, valid[0].shard, buckets)
    return rows


def _corrections(rows_of, buckets: int):
    """An uncounted copy's fact as -1 rows that belong to no shard."""
    return lambda fact: rows_of([fact], -1, NO_SHARD, buckets)


# per bucket -------------------------------------------------------------------------------

def _copies(bucket_group):
    """(shard, index, valid) of every later copy of a key."""
    rows = _unpack(bucket_group, KEY_ROW)
    order, starts = _runs(rows["lo"], rows["hi"], rows["shard"], rows["index"], group=2)
    for copies in _run_slices(order, starts, _run_lengths(order, starts) > 1):
        for i in copies[1:]:  # the first copy (earliest shard, then index) is kept
            yield int(rows["shard"][i]), int(rows["index"][i]), bool(rows["valid"][i])


def _later_copies(bucket_group):
    for shard, index, _ in _copies(bucket_group):
        yield shard, (R.DUPLICATE_KEY.value, index, "key already read from an earlier sample")


def _uncounted_copies(bucket_group):
    """(shard, index) of the valid copies the statistics must not count: all but the first copy
    of a key. Each was counted once from its shard; its facts are read back and counted -1 (the
    first copy, when not valid, was never counted), so the statistics are those of valid first
    copies. Duplicate keys are rare: this touches few shards."""
    for shard, index, valid in _copies(bucket_group):
        if valid:
            yield shard, index


class _UncountedFacts(beam.DoFn):
    """The facts of the uncounted copies, read back from their raw shard's facts file."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def process(self, shard_joined):
        shard, joined = shard_joined
        indices = list(joined["indices"])
        if indices:
            (path,) = joined["path"]
            yield from facts_at(shard, path, self.out_dir, indices)


def _too_many_texts(bucket_group, limit: int):
    rows = _unpack(bucket_group, IMAGE_ROW)
    order, starts = _runs(rows["lo"], rows["hi"])
    totals = np.add.reduceat(rows["count"][order].astype(np.int64), starts) if len(rows) else np.zeros(0, np.int64)
    for run in _run_slices(order, starts, totals > limit):
        image = rows[run]
        total = int(image["count"].sum())
        for shard in _holding(image):
            yield shard, (R.IMAGE_TOO_MANY_TEXTS.value, _id_bytes(image["lo"][0], image["hi"][0]),
                          f"image has {total} alt-texts > {limit}")


def _too_common(bucket_group, limit: int):
    """Per text of the bucket (all its rows are here), the content hashes with a positive count."""
    rows = _unpack(bucket_group, PAIR_ROW)
    order, starts = _runs(rows["lo"], rows["hi"], rows["image_lo"], rows["image_hi"], group=2)
    # a text with no more rows than the limit has no more images either
    for run in _run_slices(order, starts, _run_lengths(order, starts) > limit):
        text = rows[run]
        pair_order, pair_starts = _runs(text["image_lo"], text["image_hi"])
        counts = np.add.reduceat(text["count"][pair_order].astype(np.int64), pair_starts)
        images = int((counts > 0).sum())
        if images > limit:
            for shard in _holding(text):
                yield shard, (R.TEXT_TOO_COMMON.value, _id_bytes(text["lo"][0], text["hi"][0]),
                              f"alt-text on {images} images > {limit}")


def _gram_dfs(bucket_group):
    """(rows, each row's gram number, df per gram) of one bucket's group."""
    rows = _unpack(bucket_group, GRAM_ROW)
    ids, which = np.unique(rows["lo"], return_inverse=True)
    df = np.zeros(len(ids), dtype=np.int64)
    np.add.at(df, which, rows["count"].astype(np.int64))
    return rows, which, df


def _df_histogram(bucket_group):
    """(df, number of grams with it) within one bucket, for the grams that are counted."""
    _, _, df = _gram_dfs(bucket_group)
    values, grams = np.unique(df[df > 0], return_counts=True)
    return [(int(d), int(n)) for d, n in zip(values, grams)]


def _rare(bucket_group, threshold: int):
    """Per shard holding rare grams of this bucket: one finding, its value the rare ids packed."""
    rows, which, df = _gram_dfs(bucket_group)
    rare = (df > 0) & (df < threshold)
    held = rows[rare[which] & (rows["shard"] != NO_SHARD) & (rows["count"] > 0)]
    for shard in np.unique(held["shard"]):
        rare_ids = np.unique(held["lo"][held["shard"] == shard])
        yield int(shard), (R.TEXT_RARE_TOKENS.value, packed_gram_ids(rare_ids), "")


class CorpusRules(beam.PTransform):
    """facts (one list per raw shard) → findings for each raw shard, and the corpus statistics.

    ``expand`` returns ``{"findings": PCollection of (shard, (reason, value, detail)),
    "stats": PCollection of one dict}``. A finding's value is a position (duplicate key), a
    content-hash or text id, or packed rare gram ids; the shard applies it to its records
    (:func:`curation.shard_passes.decide_shard`). ``raw_shards`` (how many) sizes the buckets.
    """

    def __init__(self, config: CurationConfig, shard_paths, out_dir: str, raw_shards: int = 1):
        super().__init__()
        self.config, self.shard_paths, self.out_dir = config, shard_paths, out_dir
        self.buckets = {table: bucket_count(raw_shards, rows) for table, rows in ROWS_PER_SHARD.items()}

    def _grouped(self, facts, uncounted, table: str, rows_of):
        buckets = self.buckets[table]
        return ((facts | f"{table}: counted" >> beam.FlatMap(_counted(rows_of, buckets)),
                 uncounted | f"{table}: corrections" >> beam.FlatMap(_corrections(rows_of, buckets)))
                | f"{table}: rows" >> beam.Flatten()
                | f"{table}: per bucket" >> beam.GroupByKey())

    def expand(self, facts):
        config, rules_i, rules_t = self.config, self.config.image, self.config.text
        by_key = (facts | "keys: rows" >> beam.FlatMap(_key_rows, self.buckets["keys"])
                  | "keys: per bucket" >> beam.GroupByKey())
        findings = [by_key | "Later copies" >> beam.FlatMap(_later_copies)]
        uncounted = (
            {"path": self.shard_paths, "indices": by_key | "Uncounted copies" >> beam.FlatMap(_uncounted_copies)}
            | "Uncounted to shards" >> beam.CoGroupByKey()
            | "Uncounted facts" >> beam.ParDo(_UncountedFacts(self.out_dir)))
        n_valid = (
            (facts | "Valid per shard" >> beam.Map(lambda fs: len(_valid(fs))),
             uncounted | "Uncounted" >> beam.Map(lambda _: -1))
            | "Valid counts" >> beam.Flatten()
            | "Count valid" >> beam.CombineGlobally(sum))

        if rules_i.max_texts_enabled:
            findings.append(self._grouped(facts, uncounted, "images", _image_rows)
                            | "Too many texts" >> beam.FlatMap(_too_many_texts, rules_i.max_texts_per_image))
        if rules_t.max_images_per_text_enabled:
            findings.append(self._grouped(facts, uncounted, "pairs", _pair_rows)
                            | "Too common" >> beam.FlatMap(_too_common, rules_t.max_images_per_text))

        k = n_valid | "K" >> beam.Map(config.rare_tokens_k)
        if rules_t.rare_tokens_enabled:
            by_gram = self._grouped(facts, uncounted, "grams", _gram_rows)
            histogram = (
                by_gram
                | "df" >> beam.FlatMap(_df_histogram)
                | "Grams per df" >> beam.CombinePerKey(sum)
                | "df histogram" >> beam.combiners.ToDict())  # bounded: one entry per distinct df
            threshold = histogram | "Threshold" >> beam.Map(frequent_threshold, beam.pvalue.AsSingleton(k))
            findings.append(by_gram | "Rare" >> beam.FlatMap(_rare, beam.pvalue.AsSingleton(threshold)))
        else:
            threshold = facts.pipeline | "No gram rule" >> beam.Create([None])
        stats = n_valid | "Stats" >> beam.Map(
            lambda n, k_, t: {"valid": n, "rare_tokens_k": k_ if rules_t.rare_tokens_enabled else None,
                              "rare_tokens_threshold_df": t},
            beam.pvalue.AsSingleton(k), beam.pvalue.AsSingleton(threshold))
        return {"findings": findings | "All findings" >> beam.Flatten(), "stats": stats}
