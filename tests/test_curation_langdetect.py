"""The batched engine gives langdetect's own answers, bit for bit, on real multilingual text."""

from __future__ import annotations

import pandas as pd

from curation import language
from curation.demo_data import udhr_texts
from curation.langdetect_batch import detect_batch, factory


def langdetect_answer(text: str):
    detector = factory().create()
    detector.append(text)
    try:
        best = detector.get_probabilities()
    except Exception:  # noqa: BLE001 - langdetect raises when a text has no features
        return None
    return (best[0].lang, best[0].prob) if best else None


def test_identical_to_langdetect_on_udhr_and_demo_captions(demo_data):
    udhr = udhr_texts(demo_data.udhr_dir)
    captions = pd.read_parquet(demo_data.catalogue)["caption"].drop_duplicates().sample(600, random_state=0).tolist()
    texts = udhr["title"].tolist() + udhr["article1"].tolist() + captions + ["", "   ", "123 456", "http://x.y/z"]
    expected = [langdetect_answer(t) for t in texts]
    got = detect_batch(texts)
    mismatches = [(t[:40], e, g) for t, e, g in zip(texts, expected, got) if e != g]
    assert not mismatches, mismatches[:5]
    assert len({e[0] for e in expected if e}) > 40  # many languages really exercised


def test_ngram_extraction_is_langdetects_own(demo_data):
    """The n-grams (and so the random draws over them) are langdetect's, gram for gram: capital
    words, repeated spaces, punctuation, Romanian comma-below letters, CJK, Arabic, Latin-1."""
    from curation.langdetect_batch import ngrams_of

    udhr = udhr_texts(demo_data.udhr_dir)
    texts = udhr["title"].tolist() + udhr["article1"].tolist() + [
        "NASA and the ESA", "a  b   c", "ȘTIINȚĂ și țară", "Ça, c'est l'été!", "東京タワーの夜景",
        "مرحبا بالعالم", "ÀÉÎ õü ß", "x", " ", "", "The USA's GDP—rising…", "mIxEd CaSe WoRdS",
        # chunks cached: the same word inside, last, and after a capital word
        "dog dog dog", " leading", "trailing ", "DOG dog Dog dOG", "ab ab", "ab",
        # append: URLs, mail, Vietnamese, space runs, the 10,000-character cap
        "see https://example.org/a?b=c and mail x.y@example.com now", "Tiếng Việt có dấu", "a" * 9_999 + "  bc d",
        # the scans skipped when they cannot match: "://" without http, an "@" without a
        # mail address, upper-case schemes; a URL and a mail address in non-ASCII text
        "ftp://files.example.org/x and HTTP://CAPS.EXAMPLE/y", "@ alone, then a@b and trailing@",
        "日本 https://example.jp/path メール name@example.com", "Việt https://x.vn a\u0301 b@c.vn",
        # cleaning: Latin letters dropped when under half the characters from U+0300 up
        # (Latin Extended Additional "ḀḁṫẞỳỸ" counts as non-Latin, as langdetect's own test does)
        "Москва Moscow столица", "ḀḁṫẞỳỸ ab", "ḀḁṫẞỳỸ abcd", "東京 Tokyo", "[\\]^_` `_^", "ÀÀÀÀ ab"]
    fac = factory()
    for text in texts:
        detector = fac.create()
        detector.append(text)
        detector.cleaning_text()
        assert ngrams_of(text, fac) == detector._extract_ngrams(), text[:40]


def test_order_and_batch_size_do_not_matter(demo_data):
    texts = udhr_texts(demo_data.udhr_dir)["title"].tolist()[:120]
    whole = detect_batch(texts)
    assert detect_batch(texts[::-1]) == whole[::-1]
    assert [detect_batch([t])[0] for t in texts[:20]] == whole[:20]


def test_cache_and_undetermined():
    language.clear_cache()
    assert language.tag_many(["12345", "", "grinning face"], min_prob=0.5)[:2] == [("und", 0.0), ("und", 0.0)]
    first = language.detect_many(["Ein Hund spielt im Garten mit einem Ball"])
    assert first == language.detect_many(["Ein Hund spielt im Garten mit einem Ball"]) and first[0][0] == "de"
    lang, prob = language.tag_many(["grinning face"], min_prob=1.01)[0]
    assert lang == "und" and 0 < prob <= 1  # below min_prob: und, probability kept


def test_captions_that_read_past_the_stream_are_rerun_on_a_longer_one(demo_data, monkeypatch):
    """A caption reads ~2,500 outputs of the shared random stream; one that reads past its end
    is rerun on a stream four times longer. Starting from 64 outputs forces every caption
    through that path, several times, and the answers are still langdetect's own."""
    from curation import langdetect_batch

    texts = udhr_texts(demo_data.udhr_dir)["title"].tolist()[:40] + ["grinning face", "Ein Hund im Garten"]
    monkeypatch.setattr(langdetect_batch, "_STREAM_START", 64)
    assert detect_batch(texts) == [langdetect_answer(t) for t in texts]


def test_sum_is_pythons_sum():
    """``_normalize_prob``'s ``sum(prob)`` as CPython computes it: plain left to right on 3.11,
    Neumaier-compensated on 3.12+ (where [1e16, 1.0, -1e16] sums to 1.0, not 0.0)."""
    import random
    import sys

    import numpy as np

    from curation.langdetect_batch import _COMPENSATED_SUM
    from curation.langdetect_kernel import python_sum as _python_sum

    rng = random.Random(0)
    rows = [[rng.random() * 10 ** rng.randint(-300, 0) for _ in range(55)] for _ in range(200)]
    rows.append([1e16, 1.0, -1e16])
    for row in rows:
        assert _python_sum(np.array(row), _COMPENSATED_SUM) == sum(row)
    assert _COMPENSATED_SUM == (sys.version_info >= (3, 12))
    assert _python_sum(np.array([1e16, 1.0, -1e16]), False) == 0.0
    assert _python_sum(np.array([1e16, 1.0, -1e16]), True) == 1.0
