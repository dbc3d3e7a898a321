"""The corpus-wide curation rules as keyed Beam aggregations over small facts.

Input: the :class:`curation.shard_passes.Fact` of every sample (key, position, validity,
content hash, text key, tokens — no image, no caption). Output: *findings*
``(shard, (reason, value, detail))`` — "in this raw shard, pairs with this content hash /
text / gram (or at this position) break this rule" — which go back to the raw shard (a
CoGroupByKey on the shard number) and are applied there to its records. Nothing corpus-sized
is gathered on one worker. Statistics count *valid first copies* (read and decoded, first
copy of their key): every valid fact counts once, and the key groups send a -1 for each valid
copy that must not count. The steps, and what crosses each shuffle:

* **duplicate keys** — GroupByKey on the key (one element per sample; a group is one key's
  copies, a handful). The first copy (lowest shard number, then index) is kept; later ones
  are ``duplicate_key``.
* **texts per image** — CombinePerKey(sum) per content hash; over
  ``image.max_texts_per_image`` → joined (CoGroupByKey) with the shards that hold the hash.
* **images per text** — CombinePerKey(sum) per (text, hash), then per text the number of
  hashes with a positive count; over the limit → joined with the shards that hold the text.
* **rare tokens** — CombinePerKey(sum) per unigram/bigram is its document frequency (df).
  The K most frequent are found without gathering the gram counts: the *histogram* of df
  values (how many grams have df = d) is the only thing combined globally, and it has at most
  one entry per distinct df value — fewer than sqrt(2 × Σdf) entries, a few thousand for a
  billion pairs. Tie rule (:func:`frequent_threshold`): the frequent set is every gram with
  df ≥ T, for the smallest T that keeps it at most K grams; grams tied at the boundary are
  all in or all out, never split by spelling. Grams with df < T are joined with the shards
  that hold them, and reject every valid pair holding one (``text_rare_tokens``).

Every count is combined in the worker before its shuffle (Beam lifts CombinePerKey and
Distinct), so what crosses is one entry per distinct value per bundle — a bundle is a raw
shard here — not one per occurrence; "which shards hold value v" has one entry per shard.
A CoGroupByKey group holds one count and the shards holding the value: at most the number
of raw shards (the corpus / 1,000), and runners that stream group values (Dataflow, Flink,
Spark) never hold it whole. Side inputs are scalars only: the number of valid pairs (for K)
and T.
"""

from __future__ import annotations

import apache_beam as beam

from curation.config import CurationConfig
from curation.records import CurationReason as R
from curation.text import unigrams_and_bigrams


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


def _by_key(fact):
    return fact.key, (fact.shard, fact.index, fact.valid, fact.sha256, fact.text_key, fact.gram_text)


def _later_copies(key_copies):
    _, copies = key_copies
    for shard, index, *_ in sorted(copies)[1:]:  # the first copy (earliest shard, then index) is kept
        yield shard, (R.DUPLICATE_KEY.value, index, "key already read from an earlier sample")


def _uncounted_copies(key_copies):
    """The valid copies the statistics must not count: all but the first copy (and the first
    too when it is not valid). They were counted once each from the facts; this takes them
    out again (weight -1), so the statistics are those of valid first copies."""
    _, copies = key_copies
    copies = sorted(copies)
    for shard, index, valid, sha256, text_key, gram_text in copies[1:]:
        if valid:
            yield sha256, text_key, gram_text, -1


def _counted(fact):
    if fact.valid:
        yield fact.sha256, fact.text_key, fact.gram_text, 1


def _grams(gram_text: str | None):
    return unigrams_and_bigrams(gram_text.split(" ")) if gram_text is not None else ()


def _over(value_count, limit: int) -> bool:
    return value_count[1] > limit


def _findings(joined_by_value, reason: str, detail_format: str):
    """(shard, (reason, value, detail)) for every shard holding a value over its limit."""
    value, joined = joined_by_value
    counts = list(joined["count"])
    if counts:
        detail = detail_format.format(counts[0])
        for shard in joined["shards"]:
            yield shard, (reason, value, detail)


def _rare(gram_joined, threshold: int):
    gram, joined = gram_joined
    counts = list(joined["count"])
    if counts and counts[0] < threshold:
        for shard in joined["shards"]:
            yield shard, (R.TEXT_RARE_TOKENS.value, gram, "")


def _shards_holding(facts, label: str, values):
    """(value, shard) once per shard that holds it (combined in the worker before the shuffle)."""
    return (facts
            | f"{label} in shard" >> beam.FlatMap(lambda f: ((v, f.shard) for v in values(f)) if f.valid else ())
            | f"{label} once per shard" >> beam.Distinct())


class CorpusRules(beam.PTransform):
    """facts → findings for each raw shard, and the corpus statistics.

    ``expand`` returns ``{"findings": PCollection of (shard, (reason, value, detail)),
    "stats": PCollection of one dict}``. A finding's value is a position (duplicate key), a
    content hash, a text key or a gram; the shard applies it to its records
    (:func:`curation.shard_passes.decide_shard`). Every count is a CombinePerKey, combined in
    the worker first (one entry per distinct value per bundle crosses the shuffle), and the
    corrections from the key groups make them counts over valid first copies.
    """

    def __init__(self, config: CurationConfig):
        super().__init__()
        self.config = config

    def expand(self, facts):
        config, rules_i, rules_t = self.config, self.config.image, self.config.text
        by_key = facts | "By key" >> beam.Map(_by_key) | "Copies per key" >> beam.GroupByKey()
        findings = [by_key | "Later copies" >> beam.FlatMap(_later_copies)]
        weighted = (
            (facts | "Counted" >> beam.FlatMap(_counted), by_key | "Uncounted" >> beam.FlatMap(_uncounted_copies))
            | "Weighted" >> beam.Flatten())
        n_valid = weighted | "Weights" >> beam.Map(lambda w: w[3]) | "Count valid" >> beam.CombineGlobally(sum)

        if rules_i.max_texts_enabled:
            limit = rules_i.max_texts_per_image
            counts = (
                weighted
                | "Image weight" >> beam.Map(lambda w: (w[0], w[3]))
                | "Pairs per image" >> beam.CombinePerKey(sum)
                | "Over text limit" >> beam.Filter(_over, limit))
            findings.append(
                {"count": counts, "shards": _shards_holding(facts, "Image", lambda f: (f.sha256,))}
                | "Join image counts" >> beam.CoGroupByKey()
                | "Too many texts" >> beam.FlatMap(_findings, R.IMAGE_TOO_MANY_TEXTS.value,
                                                   f"image has {{}} alt-texts > {limit}"))
        if rules_t.max_images_per_text_enabled:
            limit = rules_t.max_images_per_text
            counts = (
                weighted
                | "Text,image weight" >> beam.Map(lambda w: ((w[1], w[0]), w[3]))
                | "Pairs per text,image" >> beam.CombinePerKey(sum)
                | "Text,image present" >> beam.Filter(lambda kv: kv[1] > 0)
                | "Text" >> beam.Map(lambda kv: (kv[0][0], 1))
                | "Images per text" >> beam.CombinePerKey(sum)
                | "Over image limit" >> beam.Filter(_over, limit))
            findings.append(
                {"count": counts, "shards": _shards_holding(facts, "Text", lambda f: (f.text_key,))}
                | "Join text counts" >> beam.CoGroupByKey()
                | "Too common" >> beam.FlatMap(_findings, R.TEXT_TOO_COMMON.value,
                                               f"alt-text on {{}} images > {limit}"))

        k = n_valid | "K" >> beam.Map(config.rare_tokens_k)
        if rules_t.rare_tokens_enabled:
            df = (
                weighted
                | "Gram weights" >> beam.FlatMap(lambda w: ((g, w[3]) for g in _grams(w[2])))
                | "Document frequency" >> beam.CombinePerKey(sum)
                | "In a counted pair" >> beam.Filter(lambda kv: kv[1] > 0))
            histogram = (
                df
                | "df" >> beam.Map(lambda kv: (kv[1], 1))
                | "Grams per df" >> beam.CombinePerKey(sum)
                | "df histogram" >> beam.combiners.ToDict())  # bounded: one entry per distinct df
            threshold = histogram | "Threshold" >> beam.Map(frequent_threshold, beam.pvalue.AsSingleton(k))
            findings.append(
                {"count": df, "shards": _shards_holding(facts, "Gram", lambda f: _grams(f.gram_text))}
                | "Join gram counts" >> beam.CoGroupByKey()
                | "Rare" >> beam.FlatMap(_rare, beam.pvalue.AsSingleton(threshold)))
        else:
            threshold = facts.pipeline | "No gram rule" >> beam.Create([None])
        stats = n_valid | "Stats" >> beam.Map(
            lambda n, k_, t: {"valid": n, "rare_tokens_k": k_ if rules_t.rare_tokens_enabled else None,
                              "rare_tokens_threshold_df": t},
            beam.pvalue.AsSingleton(k), beam.pvalue.AsSingleton(threshold))
        return {"findings": findings | "All findings" >> beam.Flatten(), "stats": stats}
