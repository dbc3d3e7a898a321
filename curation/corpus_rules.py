"""The corpus-wide curation rules as keyed Beam aggregations over small facts.

Input: the :class:`curation.shard_passes.Fact` of every sample (key, position, validity,
content hash, text key, tokens — no image, no caption). Output: *verdicts*, one
``(shard, (index, reason, detail))`` per sample a rule rejects, which go back to the
sample's shard (a CoGroupByKey on the shard number). Nothing corpus-sized is gathered on one
worker; what each step holds:

* **duplicate keys** — GroupByKey on the key; a group is one key's copies (a handful). The
  first copy (lowest shard number, then index) is kept; later ones are ``duplicate_key``.
  Only first copies that were read and decoded (*valid*) count in the statistics below.
* **texts per image** — GroupByKey on the content hash; a group holds the positions of one
  image's pairs. Over ``image.max_texts_per_image`` → ``image_too_many_texts`` for all of them.
* **images per text** — Distinct (text, hash), CombinePerKey counts the distinct images of
  each text, and a CoGroupByKey joins the counts over the limit back to the text's positions.
* **rare tokens** — GroupByKey on each distinct unigram/bigram gives its document frequency
  (df). The K most frequent are found without gathering the gram counts: the *histogram* of
  df values (how many grams have df = d) is the only thing combined globally, and it has at
  most one entry per distinct df value — fewer than sqrt(2 × Σdf) entries, a few thousand
  for a billion pairs. Tie rule (:func:`frequent_threshold`): the frequent set is every gram
  with df ≥ T, for the smallest T that keeps it at most K grams; grams tied at the boundary
  are all in or all out, never split by spelling. A gram with df < T is rare and rejects
  every valid pair that holds it (``text_rare_tokens``, the rare grams in the detail).

Side inputs are scalars only: the number of valid pairs (for K) and T.

On a local runner the groups of the most frequent grams (every position holding "the") are
materialised by the runner; runners that stream group values (Dataflow, Flink, Spark) never
hold a group in memory, and the DoFns here only iterate them.
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
        yield shard, (index, R.DUPLICATE_KEY.value, "key already read from an earlier sample")


def _first_valid_copy(key_copies):
    _, copies = key_copies
    shard, index, valid, sha256, text_key, gram_text = min(copies)
    if valid:
        yield shard, index, sha256, text_key, gram_text


def _too_many_texts(sha_positions, limit: int):
    _, positions = sha_positions
    n = sum(1 for _ in positions)
    if n > limit:
        for shard, index in positions:
            yield shard, (index, R.IMAGE_TOO_MANY_TEXTS.value, f"image has {n} alt-texts > {limit}")


def _too_common(text_joined, limit: int):
    _, joined = text_joined
    counts = list(joined["images"])
    if counts:
        n = counts[0]
        for shard, index in joined["positions"]:
            yield shard, (index, R.TEXT_TOO_COMMON.value, f"alt-text on {n} images > {limit}")


def _grams(valid):
    shard, index, _, _, gram_text = valid
    if gram_text is not None:
        for gram in unigrams_and_bigrams(gram_text.split(" ")):
            yield gram, (shard, index)


def _rare(gram_positions, threshold: int):
    gram, positions = gram_positions
    if sum(1 for _ in positions) < threshold:
        for shard, index in positions:
            yield shard, (index, R.TEXT_RARE_TOKENS.value, gram)


class CorpusVerdicts(beam.PTransform):
    """facts → (verdicts keyed by shard, number of valid pairs, corpus statistics dict).

    ``expand`` returns a dict of PCollections: ``verdicts``, ``stats`` (one dict: valid
    pairs, K and T of the rare-token rule).
    """

    def __init__(self, config: CurationConfig):
        super().__init__()
        self.config = config

    def expand(self, facts):
        config, rules_i, rules_t = self.config, self.config.image, self.config.text
        by_key = facts | "By key" >> beam.Map(_by_key) | "Copies per key" >> beam.GroupByKey()
        verdicts = [by_key | "Later copies" >> beam.FlatMap(_later_copies)]
        valid = by_key | "First valid copies" >> beam.FlatMap(_first_valid_copy)
        n_valid = valid | "Count valid" >> beam.combiners.Count.Globally()

        if rules_i.max_texts_enabled:
            verdicts.append(
                valid
                | "Image positions" >> beam.Map(lambda v: (v[2], (v[0], v[1])))
                | "Pairs per image" >> beam.GroupByKey()
                | "Over text limit" >> beam.FlatMap(_too_many_texts, rules_i.max_texts_per_image))
        if rules_t.max_images_per_text_enabled:
            over = (
                valid
                | "Text,image" >> beam.Map(lambda v: (v[3], v[2]))
                | "Distinct text,image" >> beam.Distinct()
                | "Text" >> beam.Map(lambda kv: (kv[0], 1))
                | "Images per text" >> beam.CombinePerKey(sum)
                | "Over image limit" >> beam.Filter(lambda kv, limit: kv[1] > limit, rules_t.max_images_per_text))
            positions = valid | "Text positions" >> beam.Map(lambda v: (v[3], (v[0], v[1])))
            verdicts.append(
                {"images": over, "positions": positions}
                | "Join text counts" >> beam.CoGroupByKey()
                | "Too common" >> beam.FlatMap(_too_common, rules_t.max_images_per_text))

        k = n_valid | "K" >> beam.Map(config.rare_tokens_k)
        if rules_t.rare_tokens_enabled:
            by_gram = valid | "Grams" >> beam.FlatMap(_grams) | "Pairs per gram" >> beam.GroupByKey()
            histogram = (
                by_gram
                | "df" >> beam.Map(lambda kv: (sum(1 for _ in kv[1]), 1))
                | "Grams per df" >> beam.CombinePerKey(sum)
                | "df histogram" >> beam.combiners.ToDict())  # bounded: one entry per distinct df
            threshold = histogram | "Threshold" >> beam.Map(frequent_threshold, beam.pvalue.AsSingleton(k))
            verdicts.append(by_gram | "Rare" >> beam.FlatMap(_rare, beam.pvalue.AsSingleton(threshold)))
        else:
            threshold = facts.pipeline | "No gram rule" >> beam.Create([None])
        stats = n_valid | "Stats" >> beam.Map(
            lambda n, k_, t: {"valid": n, "rare_tokens_k": k_ if rules_t.rare_tokens_enabled else None,
                              "rare_tokens_threshold_df": t},
            beam.pvalue.AsSingleton(k), beam.pvalue.AsSingleton(threshold))
        return {"verdicts": verdicts | "All verdicts" >> beam.Flatten(), "stats": stats}
