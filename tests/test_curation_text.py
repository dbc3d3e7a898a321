"""Caption normalisation and word counting, on real multilingual text (UDHR)."""

from __future__ import annotations

import math
import re

import pytest

from curation.demo_data import udhr_texts
from curation.text import TextRejected, normalise, unigrams, unigrams_and_bigrams


def test_normalisation_steps():
    assert normalise("A cat &amp;amp; a dog".encode()).text == "A cat & a dog"       # double-escaped
    assert normalise("  tabs\tand\nnew\r\nlines  ".encode()).text == "tabs and new lines"
    assert normalise("cafe\u0301".encode()).text == "caf\u00e9"                        # NFC
    assert normalise("zero\u200bwidth\x07bell\ufeff".encode()).text == "zero width bell"
    assert normalise("a\u00a0b".encode()).text == "a b"                                 # no-break space


@pytest.mark.parametrize(
    "raw, reason",
    [
        (None, "missing_text"),
        (b"caf\xe9 au lait", "text_invalid"),
        (b"nul\x00inside", "text_invalid"),
        (b"   \t\n ", "text_empty"),
        ("\u200b\ufeff".encode(), "text_empty"),
        (b"&nbsp;", "text_empty"),
    ],
)
def test_unusable_captions(raw, reason):
    with pytest.raises(TextRejected) as err:
        normalise(raw)
    assert err.value.reason == reason


def test_long_captions_truncate_or_reject():
    huge = ("word " * 250_000).encode()  # a 1.25 MB caption
    text = normalise(huge, max_chars=4096, too_long="truncate")
    assert len(text.text) <= 4096 and text.text.endswith("word") and text.truncated_from == len(huge.strip())
    assert normalise(b"x" * 4096, max_chars=4096).truncated_from is None                 # at the bound: kept
    with pytest.raises(TextRejected) as err:
        normalise(b"x" * 4097, max_chars=4096, too_long="reject")
    assert err.value.reason == "text_too_long"


def test_word_counts_are_fair_to_unspaced_scripts(demo_data):
    udhr = udhr_texts(demo_data.udhr_dir).set_index("code")
    english = udhr.loc["eng", "article1"]
    assert unigrams(english)[1] == len(english.replace(".", " ").split())
    chinese = udhr.loc["cmn_hans", "article1"]
    han = sum(1 for ch in chinese if "\u4e00" <= ch <= "\u9fff")
    assert unigrams(chinese)[1] == han  # one unigram per Han character, punctuation ignored
    thai = udhr.loc["tha", "article1"]
    runs = re.findall("[\u0e00-\u0e7f]+", thai)  # maximal runs of Thai letters
    expected = sum(math.ceil(len(run) / 4) for run in runs)
    assert unigrams(thai, chars_per_word=4)[1] == expected
    # without the rule a whole Thai sentence would be one "word": the count must be far higher
    assert unigrams(thai)[1] > 3 * len(runs)


def test_grams():
    tokens, count = unigrams("A photo of a Dog")
    assert count == 5 and tokens == ["a", "photo", "of", "a", "dog"]
    assert unigrams_and_bigrams(tokens) == {"a", "photo", "of", "dog", "a photo", "photo of", "of a", "a dog"}


def _ascii_captions(demo_data):
    """Real ASCII captions (the demo corpus's) and generated ones made of the characters the
    two paths treat differently: apostrophes and hyphens inside and at the ends of words,
    runs of spaces, tabs and newlines, entities, DEL and other control characters."""
    import random

    import pandas as pd

    real = [c for c in pd.read_parquet(demo_data.catalogue, columns=["caption"])["caption"] if c and c.isascii()]
    rng = random.Random(0)
    alphabet = ["a", "B", "z", "Q", "7", "0", "'", "-", "--", " ", "  ", "\t", "\n", "\x7f", "\x01",
                "&amp;", "&", ";", ".", ",", "_", "x-y", "it's", "'s", "-re", "AB12", "~"]
    made = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30))) for _ in range(5000)]
    return real + made


def test_ascii_shortcut_gives_the_general_paths_results(demo_data):
    """normalise and unigrams on plain ASCII equal the general Unicode path, text for text."""
    from curation.text import _normalise_unicode, _unigrams_unicode

    captions = _ascii_captions(demo_data)
    assert len(captions) > 6000
    shortcut = 0
    for caption in captions:
        text = caption.strip("\x00")
        try:
            normalised = normalise(text.encode()).text
        except TextRejected:
            assert _normalise_unicode(text) == ""
            continue
        assert normalised == _normalise_unicode(text)
        if normalised.isascii():
            shortcut += 1
            assert unigrams(normalised, 4.0) == _unigrams_unicode(normalised, 4.0)
    assert shortcut > 5000
