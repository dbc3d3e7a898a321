"""The corpus-wide curation rules as keyed Beam aggregations over small facts.

Input: the :class:`curation.shard_passes.Fact` of every sample (key, position, validity,
content hash, text key, tokens — no image, no caption). Output: *findings*
``(shard, (reason, value, detail))`` — "in this raw shard, pairs with this content hash /
text / gram (or at this position) break this rule" — which go back to the raw shard (a
CoGroupByKey on the shard number) and are applied there to its records. Nothing corpus-sized
is gathered on one worker. Statistics count *valid first copies* (read and decoded, first
copy of their key): every valid fact counts once, and each valid copy that must not count is
read back from its shard's facts and counts -1. Content hashes and texts are counted by a
16-byte id (:func:`curation.shard_passes.value_id`). The steps, and what crosses each shuffle:

* **duplicate keys** — GroupByKey on the key (one element per sample: the key, its position
  and validity; a group is one key's copies, a handful). The first copy (lowest shard number, then index) is kept; later ones
  are ``duplicate_key``.
* **texts per image** — each raw shard counts its valid pairs per content hash; a
  GroupByKey on the hash sums the shards' counts (and the corrections). Over
  ``image.max_texts_per_image`` → a finding for every shard that holds the hash.
* **images per text** — CombinePerKey(sum) per (text, hash), then per text the number of
  hashes with a positive count; over the limit → joined (CoGroupByKey) with the shards that
  hold the text.
* **rare tokens** — each raw shard counts its unigrams/bigrams; a GroupByKey on the gram sums
  them into its document frequency (df). The K most frequent are found without gathering the
  gram counts: the *histogram* of df values (how many grams have df = d) is the only thing
  combined globally, and it has at most one entry per distinct df value — fewer than
  sqrt(2 × Σdf) entries, a few thousand for a billion pairs. Tie rule
  (:func:`frequent_threshold`): the frequent set is every gram with df ≥ T, for the smallest T
  that keeps it at most K grams; grams tied at the boundary are all in or all out, never split
  by spelling. A gram with df < T is a finding for every shard holding it, and rejects every
  valid pair there that holds it (``text_rare_tokens``).

Counting per raw shard first (in the worker, before the shuffle) means one element per
distinct value per shard crosses it, not one per occurrence. A group holds one entry per raw
shard that has the value: at most the number of raw shards (the corpus / 1,000); runners
that stream group values (Dataflow, Flink, Spark) never hold it whole. Side inputs are
scalars only: the number of valid pairs (for K) and T.
"""

from __future__ import annotations

from collections import Counter

import apache_beam as beam

from curation.config import CurationConfig
from curation.shard_passes import facts_at
from curation.text import unigrams_and_bigrams
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


_NO_SHARD = (1 << 32) - 1  # a correction's "shard": it holds nothing


def _entry(count: int, shard: int) -> int:
    """(count, shard) packed in one int64: a local runner keeps each grouped value as a Python
    object, and one int is a third of a tuple of two (counts are in ±2^31, shards < 2^32 - 1)."""
    return count * (1 << 32) + shard


def _unpack(entry: int) -> tuple[int, int]:
    return entry >> 32, entry & ((1 << 32) - 1)


def _by_key(shard_facts):
    for fact in shard_facts:
        yield fact.key, (fact.shard, fact.index, fact.valid)


def _later_copies(key_copies):
    _, copies = key_copies
    for shard, index, _ in sorted(copies)[1:]:  # the first copy (earliest shard, then index) is kept
        yield shard, (R.DUPLICATE_KEY.value, index, "key already read from an earlier sample")


def _uncounted_copies(key_copies):
    """(shard, index) of the valid copies the statistics must not count: all but the first copy
    of a key. Each was counted once from its shard; its facts are read back and counted -1 (the
    first copy, when not valid, was never counted), so the statistics are those of valid first
    copies. Duplicate keys are rare: this touches few shards."""
    _, copies = key_copies
    for shard, index, valid in sorted(copies)[1:]:
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


def _grams(gram_text: str | None):
    return unigrams_and_bigrams(gram_text.split(" ")) if gram_text is not None else ()


def _valid(shard_facts):
    return [f for f in shard_facts if f.valid]


# per raw shard, counted in the worker: one element per distinct value and shard crosses the shuffle

def _image_counts(shard_facts):
    valid = _valid(shard_facts)
    for image_id, n in sorted(Counter(f.image_id for f in valid).items()):
        yield image_id, _entry(n, valid[0].shard)


def _pair_counts(shard_facts):
    for pair, n in sorted(Counter((f.text_id, f.image_id) for f in _valid(shard_facts)).items()):
        yield pair, n


def _text_shards(shard_facts):
    valid = _valid(shard_facts)
    for text_id in sorted({f.text_id for f in valid}):
        yield text_id, valid[0].shard


def _gram_counts(shard_facts):
    valid = _valid(shard_facts)
    counts = Counter(g for f in valid for g in _grams(f.gram_text))
    for gram, n in sorted(counts.items()):
        yield gram, _entry(n, valid[0].shard)


def _over(value_count, limit: int) -> bool:
    return value_count[1] > limit


def _total(entries) -> int:
    return sum(_unpack(e)[0] for e in entries)


def _holding(entries):
    """The shards among a group's (count, shard) entries that hold the value."""
    return sorted({shard for n, shard in map(_unpack, entries) if shard != _NO_SHARD and n > 0})


def _too_many_texts(sha_counts, limit: int):
    image_id, counts = sha_counts
    total = _total(counts)
    if total > limit:
        for shard in _holding(counts):
            yield shard, (R.IMAGE_TOO_MANY_TEXTS.value, image_id, f"image has {total} alt-texts > {limit}")


def _too_common(text_joined, limit: int):
    text_id, joined = text_joined
    counts = list(joined["count"])
    if counts:
        for shard in joined["shards"]:
            yield shard, (R.TEXT_TOO_COMMON.value, text_id, f"alt-text on {counts[0]} images > {limit}")


def _rare(gram_counts, threshold: int):
    gram, counts = gram_counts
    df = _total(counts)
    if 0 < df < threshold:
        for shard in _holding(counts):
            yield shard, (R.TEXT_RARE_TOKENS.value, gram, "")


class CorpusRules(beam.PTransform):
    """facts (one list per raw shard) → findings for each raw shard, and the corpus statistics.

    ``expand`` returns ``{"findings": PCollection of (shard, (reason, value, detail)),
    "stats": PCollection of one dict}``. A finding's value is a position (duplicate key), a
    content hash, a text key or a gram; the shard applies it to its records
    (:func:`curation.shard_passes.decide_shard`).
    """

    def __init__(self, config: CurationConfig, shard_paths, out_dir: str):
        super().__init__()
        self.config, self.shard_paths, self.out_dir = config, shard_paths, out_dir

    def expand(self, facts):
        config, rules_i, rules_t = self.config, self.config.image, self.config.text
        by_key = facts | "By key" >> beam.FlatMap(_by_key) | "Copies per key" >> beam.GroupByKey()
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
            findings.append(
                (facts | "Image counts" >> beam.FlatMap(_image_counts),
                 uncounted | "Image corrections" >> beam.Map(lambda u: (u.image_id, _entry(-1, _NO_SHARD))))
                | "Image entries" >> beam.Flatten()
                | "Per image" >> beam.GroupByKey()
                | "Too many texts" >> beam.FlatMap(_too_many_texts, rules_i.max_texts_per_image))
        if rules_t.max_images_per_text_enabled:
            limit = rules_t.max_images_per_text
            counts = (
                (facts | "Text,image counts" >> beam.FlatMap(_pair_counts),
                 uncounted | "Text,image corrections" >> beam.Map(lambda u: ((u.text_id, u.image_id), -1)))
                | "Text,image entries" >> beam.Flatten()
                | "Pairs per text,image" >> beam.CombinePerKey(sum)
                | "Text,image present" >> beam.Filter(lambda kv: kv[1] > 0)
                | "Text" >> beam.Map(lambda kv: (kv[0][0], 1))
                | "Images per text" >> beam.CombinePerKey(sum)
                | "Over image limit" >> beam.Filter(_over, limit))
            findings.append(
                {"count": counts, "shards": facts | "Text shards" >> beam.FlatMap(_text_shards)}
                | "Join text counts" >> beam.CoGroupByKey()
                | "Too common" >> beam.FlatMap(_too_common, limit))

        k = n_valid | "K" >> beam.Map(config.rare_tokens_k)
        if rules_t.rare_tokens_enabled:
            by_gram = (
                (facts | "Gram counts" >> beam.FlatMap(_gram_counts),
                 uncounted | "Gram corrections" >> beam.FlatMap(lambda u: ((g, _entry(-1, _NO_SHARD)) for g in _grams(u.gram_text))))
                | "Gram entries" >> beam.Flatten()
                | "Per gram" >> beam.GroupByKey())
            histogram = (
                by_gram
                | "df" >> beam.FlatMap(lambda kv: [(_total(kv[1]), 1)] if _total(kv[1]) > 0 else [])
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
