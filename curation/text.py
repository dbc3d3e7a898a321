"""Caption normalisation and word counting, fair to languages written without spaces.

Normalisation: strict UTF-8 (invalid bytes reject the caption: the text is not what the
page said), NUL bytes reject it (binary junk, not a caption), HTML entities unescaped
(twice at most: web alt-text is often double-escaped), control characters and zero-width spaces turned into
spaces, other invisible format characters dropped, Unicode NFC, white space collapsed, then a length bound.

Word counting (the ALIGN 3–20 unigram rule) must not make Chinese captions "one word":
* Han, Hiragana and Katakana characters count one unigram each — BERT's basic tokenizer
  does the same, and a Chinese word averages ~1.5 characters, so this is close to words;
* Thai, Lao, Khmer, Myanmar and Tibetan are written without spaces and need a dictionary
  to segment; a run of such characters counts ``ceil(len / chars_per_word)`` unigrams
  (4 by default: the mean length of a Thai word), a documented estimate;
* everything else splits on non-letters, keeping inner apostrophes and hyphens.
The same tokens, case-folded, feed the corpus-wide unigram/bigram counts.

Plain ASCII captions (most web alt-text) take a shorter path through both steps with the
same results (``tests/test_curation_text.py`` compares the two paths): the general one's
Unicode regexes and normalisation were a fifth of curation's per-record cost.
"""

from __future__ import annotations

import hashlib
import html
import math
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import regex

_CJK = r"\p{Han}\p{Hiragana}\p{Katakana}"
_UNSEGMENTED = r"\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}"
_TOKEN = regex.compile(
    rf"(?P<cjk>[{_CJK}])"
    rf"|(?P<unseg>[{_UNSEGMENTED}]+)"
    rf"|(?P<word>[[\p{{L}}\p{{M}}\p{{N}}]--[{_CJK}{_UNSEGMENTED}]]+(?:['’\-][[\p{{L}}\p{{M}}\p{{N}}]--[{_CJK}{_UNSEGMENTED}]]+)*)",
    regex.V1,
)
# control characters and the zero-width space separate words: they become spaces; a BOM,
# soft hyphen or bidi mark is dropped; ZWJ/ZWNJ stay (they carry meaning in emoji
# sequences and in Persian and Indic scripts)
_AS_SPACE = regex.compile(r"[\p{Cc}\u200b\u2028\u2029]")
_DROPPED = regex.compile(r"[[\p{Cf}]--[\u200c\u200d]]", regex.V1)
_SPACE = regex.compile(r"\s+")
_ASCII_TOKEN = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")


class TextRejected(ValueError):
    """A caption that cannot be used; ``reason`` is a CurationReason value."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class NormalisedText:
    text: str
    truncated_from: int | None = None  # original length in characters when truncated


def normalise(raw: bytes | None, max_chars: int = 4096, too_long: str = "truncate") -> NormalisedText:
    """Bytes of a ``.txt`` → normalised caption, or :class:`TextRejected`."""
    if raw is None:
        raise TextRejected("missing_text", "no caption in the sample")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TextRejected("text_invalid", f"not valid UTF-8 at byte {err.start}") from None
    if "\x00" in text:
        raise TextRejected("text_invalid", f"contains {text.count(chr(0))} NUL byte(s)")
    if text.isascii() and text.isprintable() and "&" not in text:
        # the common web alt-text, at a fifth of the cost: no entity to unescape, no control or
        # format character, already NFC, and " " its only white space (the rest is not printable)
        text = " ".join(text.split())
    else:
        text = _normalise_unicode(text)
    if not text:
        raise TextRejected("text_empty", "empty after normalisation")
    if len(text) <= max_chars:
        return NormalisedText(text)
    if too_long == "reject":
        raise TextRejected("text_too_long", f"{len(text)} characters > {max_chars}")
    cut = text[:max_chars]
    boundary = cut.rfind(" ")
    if boundary > max_chars * 0.8:  # prefer a word boundary when one is near
        cut = cut[:boundary]
    return NormalisedText(cut.rstrip(), truncated_from=len(text))


def _normalise_unicode(text: str) -> str:
    for _ in range(2):
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    text = _DROPPED.sub("", _AS_SPACE.sub(" ", text))
    text = unicodedata.normalize("NFC", text)
    return _SPACE.sub(" ", text).strip()


def unigrams(text: str, chars_per_word: float = 4.0) -> tuple[list[str], int]:
    """(case-folded tokens, unigram count) of a normalised caption."""
    if text.isascii():
        # _TOKEN's word alternative restricted to ASCII (letters and digits, inner ' and -),
        # the only one that matches there; case-folding ASCII is lower()
        tokens = _ASCII_TOKEN.findall(text.lower())
        return tokens, len(tokens)
    return _unigrams_unicode(text, chars_per_word)


def _unigrams_unicode(text: str, chars_per_word: float) -> tuple[list[str], int]:
    tokens: list[str] = []
    count = 0
    for match in _TOKEN.finditer(text):
        token = match.group().casefold()
        tokens.append(token)
        if match.lastgroup == "unseg":
            count += math.ceil(len(token) / chars_per_word)
        else:
            count += 1
    return tokens, count


def unigrams_and_bigrams(tokens: list[str]) -> set[str]:
    """The distinct unigrams and bigrams of a caption (bigrams joined by a space)."""
    grams = set(tokens)
    grams.update(f"{a} {b}" for a, b in zip(tokens, tokens[1:]))
    return grams


@lru_cache(maxsize=1 << 16)
def gram_id(gram: str) -> int:
    """A gram's 64-bit id (blake2b of its UTF-8): what the rare-token rule counts and names.
    Cached (at most 65,536 grams, a few MB): captions are Zipf-distributed, so most grams of a
    shard were hashed before, by this shard's corpus-rule table or its rare-token check."""
    return int.from_bytes(hashlib.blake2b(gram.encode("utf-8"), digest_size=8).digest(), "little")
