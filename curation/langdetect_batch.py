"""langdetect's own algorithm, compiled with numba, with identical answers.

Why by hand: langdetect spends ~90 % of its time in two pure-Python loops over its 55
languages (``_update_lang_prob``, ``_normalize_prob``), once per random n-gram draw, ~1,200
draws per caption. No maintained package gives the same answers faster, and the issue asks
for langdetect's answers, cheaper. This module keeps everything that decides the answer —
langdetect's own text cleaning, n-gram extraction, profiles, seed, trial count, alpha, the
convergence test and the float operations in the same order — and runs the draw loop as one
numba-compiled function, a line-for-line transcription of ``Detector._detect_block``
(:mod:`curation.langdetect_kernel`, which says why numba).

Exactness rests on four facts, each checked by ``tests/test_curation_langdetect.py`` against
langdetect on thousands of real captions (demo corpus + UDHR in ~500 languages):

* with ``DetectorFactory.seed = 0`` every detector re-seeds ``random.Random(0)``, so every
  caption reads the *same* Mersenne Twister output stream: it is generated once
  (``getrandbits(32)``) and each caption keeps a read position. ``choice`` is
  ``getrandbits(k) >> (32 - k)`` with rejection, exactly as CPython's ``_randbelow``;
* ``gauss`` (CPython's Box–Muller, with its cached second value) is a function of the read
  position alone, so both of its values are computed in Python, with ``math``, for every
  position of the stream (``_Stream``), and the compiled loop only looks them up;
* numba compiles ``*``, ``+`` and ``/`` on float64 to single IEEE operations, rounded like
  Python floats (no ``fastmath``, so no fused multiply-add and no reordering);
* the one reduction, ``sum(prob)``, is done in Python's order: a plain left-to-right
  addition on CPython 3.11, and on 3.12+ the compensated (Neumaier) addition that ``sum``
  does there, transcribed from CPython's ``builtin_sum_impl``.

Langdetect's n-gram extraction is also redone here (``_extract_ngrams``), step for step, only
with each character's normalisation looked up once and each space-separated chunk's grams
cached, as rows of a per-process profile table (``_Profiles``: each gram's 55 probabilities
copied once into a numpy array, instead of every batch looking up every gram and copying its
row again, which was a third of the batch's cost); the test compares it gram for gram.

Memory: one batch's n-gram rows, (captions × 55) float64 answers, the profile table of the
grams seen so far (at most langdetect's 87,598 grams × 55 float64: 39 MB), the shared random
stream with its two Gaussian tables (64 Ki positions, 1.5 MB, grown on demand for a caption
that reads further), a table of normalised characters (bounded by Unicode) and the chunk
cache (at most 200,000 chunks, a few tens of MB for web alt-text; cleared when full).
"""

from __future__ import annotations

import math
import random
import re
import sys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from langdetect import DetectorFactory, detector_factory
from langdetect.detector import Detector
from langdetect.utils.ngram import NGram

N_TRIAL = 7
ALPHA_DEFAULT = Detector.ALPHA_DEFAULT
ALPHA_WIDTH = Detector.ALPHA_WIDTH
ITERATION_LIMIT = Detector.ITERATION_LIMIT
CONV_THRESHOLD = Detector.CONV_THRESHOLD
BASE_FREQ = Detector.BASE_FREQ
PROB_THRESHOLD = Detector.PROB_THRESHOLD
_TWOPI = 2.0 * math.pi
_COMPENSATED_SUM = sys.version_info >= (3, 12)  # CPython 3.12 made sum() of floats compensated
_STREAM_START = 1 << 16  # outputs of the shared stream; grown only for a caption that reads past them


def factory():
    DetectorFactory.seed = 0
    detector_factory.init_factory()
    return detector_factory._factory


@dataclass(frozen=True)
class _Stream:
    """The first outputs of random.Random(0), as every detector reads them, and for each
    position p the two values ``gauss`` makes when its random() calls start at p."""

    outputs: np.ndarray   # uint64, getrandbits(32) in order
    z_first: np.ndarray   # float64: what gauss() returns
    z_second: np.ndarray  # float64: what it caches for the next call


@lru_cache(maxsize=2)
def _stream(length: int) -> _Stream:
    rng = random.Random(0)
    outputs = [rng.getrandbits(32) for _ in range(length)]
    # CPython's random(): 53 bits from two outputs (exact, whatever computes it)
    uniform = [((outputs[p] >> 5) * 67108864.0 + (outputs[p + 1] >> 6)) * (1.0 / 9007199254740992.0)
               for p in range(length - 1)]
    first, second = np.zeros(length), np.zeros(length)
    for p in range(length - 3):  # CPython's gauss(): random() at p and at p + 2
        x2pi = uniform[p] * _TWOPI
        g2rad = math.sqrt(-2.0 * math.log(1.0 - uniform[p + 2]))
        first[p] = math.cos(x2pi) * g2rad
        second[p] = math.sin(x2pi) * g2rad
    return _Stream(np.array(outputs, dtype=np.uint64), first, second)


def ngrams_of(text: str, fac) -> list[str]:
    """langdetect's own preprocessing: append (URL/mail removal, Vietnamese normalisation,
    space folding, length cap), Latin cleaning, n-gram extraction filtered by its profiles."""
    profiles = _profiles(fac)
    return [profiles.grams[row] for part in _gram_rows(text, fac, profiles) for row in part.tolist()]


def _gram_rows(text: str, fac, profiles: "_Profiles") -> list[np.ndarray]:
    """:func:`ngrams_of` as rows of ``profiles``' table, one array per chunk."""
    return _extract_ngrams(_cleaned(text, _max_text_length(fac)), profiles)


class _Profiles:
    """langdetect's profile rows (55 probabilities per gram) of the grams seen so far, as one
    float64 table that grows by doubling; ``grams[row]`` names a row."""

    def __init__(self, word_lang_prob_map: dict):
        self.source = word_lang_prob_map
        self.row_of: dict[str, int] = {}
        self.grams: list[str] = []
        self._table = np.empty((4096, len(next(iter(word_lang_prob_map.values())))))

    def row(self, gram: str) -> int:
        row = self.row_of.get(gram)
        if row is None:
            row = self.row_of[gram] = len(self.grams)
            if row == len(self._table):
                self._table = np.concatenate([self._table, np.empty_like(self._table)])
            self._table[row] = self.source[gram]
            self.grams.append(gram)
        return row

    @property
    def table(self) -> np.ndarray:
        return self._table[:len(self.grams)]


_PROFILES: list[_Profiles] = []


def _profiles(fac) -> _Profiles:
    if not _PROFILES or _PROFILES[0].source is not fac.word_lang_prob_map:
        _PROFILES[:] = [_Profiles(fac.word_lang_prob_map)]
        _CHUNK_GRAMS.clear()  # rows of another table
    return _PROFILES[0]


@lru_cache(maxsize=4)
def _max_text_length(fac) -> int:
    return fac.create().max_text_length


_SPACE_RUNS = re.compile(" +")
_LATIN = re.compile("[A-z]")           # cleaning_text's 'A' <= ch <= 'z'
_FROM_U0300 = re.compile("[\u0300-\U0010ffff]")


def _cleaned(text: str, max_length: int) -> str:
    """``Detector.append`` then ``Detector.cleaning_text``, with their per-character Python
    loops done by regular expressions that keep and drop the same characters:

    * append keeps a character unless it is a space after a space, over the first
      ``max_length`` characters: runs of spaces folded to one;
    * cleaning drops the Latin letters (``'A'``–``'z'``) when they are fewer than half the
      characters from U+0300 up. langdetect means to leave out its "Latin Extended Additional"
      block there, but compares the block's number with its name, so it never does; neither
      do we (the test compares the result with langdetect's own on such text)."""
    # Each step is skipped where it cannot change the text (most web alt-text is plain ASCII
    # without a URL): these scans were a fifth of a caption's cost, the e-mail pattern's
    # backtracking over every word the most of it.
    if "://" in text:  # URL_RE needs "http://" or "https://"
        text = Detector.URL_RE.sub(" ", text)
    if "@" in text:  # MAIL_RE needs an "@"
        text = Detector.MAIL_RE.sub(" ", text)
    plain = text.isascii()
    if not plain:  # normalize_vi rewrites a letter followed by a combining mark (U+0300-U+0323)
        text = NGram.normalize_vi(text)
    text = _SPACE_RUNS.sub(" ", text[:max_length])
    # only characters from U+0300 up can outnumber the Latin letters: none in ASCII text
    if not plain and 2 * len(_LATIN.findall(text)) < len(_FROM_U0300.findall(text)):
        text = _LATIN.sub("", text)
    return text


_NORMALISED: dict[str, str] = {}  # bounded by the characters there are
_CHUNK_GRAMS: dict[str, np.ndarray] = {}  # chunk -> its grams' rows in the _Profiles table
_CHUNK_LIMIT = 200_000


def _extract_ngrams(text: str, profiles: _Profiles) -> list[np.ndarray]:
    """``Detector._extract_ngrams``, gram for gram, computed per space-separated chunk and
    cached (captions repeat their words).

    Why per chunk is exact: a space normalises to a space, and the character after one resets
    the extractor (``NGram.add_char``: ``grams = " "``, ``capital = False``), which is also
    its starting state. So the grams of ``"ab cd"`` are those of ``"ab "`` then of ``"cd"``,
    each extracted from the start."""
    result: list[np.ndarray] = []
    chunks = text.split(" ")
    for i, chunk in enumerate(chunks):
        if i < len(chunks) - 1:
            chunk += " "
        rows = _CHUNK_GRAMS.get(chunk)
        if rows is None:
            if len(_CHUNK_GRAMS) >= _CHUNK_LIMIT:
                _CHUNK_GRAMS.clear()
            grams = _extract_from_start(chunk, profiles.source)
            rows = _CHUNK_GRAMS[chunk] = np.array([profiles.row(g) for g in grams], dtype=np.int64)
        result.append(rows)
    return result


def _extract_from_start(text: str, profiles: dict) -> tuple[str, ...]:
    """``Detector._extract_ngrams`` with ``NGram.add_char`` inlined, step for step, and its
    per-character ``NGram.normalize`` (a pure function of the character) looked up once per
    character: that normalisation was about half of the extraction's cost."""
    result: list[str] = []
    grams, capital = " ", False
    for raw in text:
        ch = _NORMALISED.get(raw)
        if ch is None:
            ch = _NORMALISED[raw] = NGram.normalize(raw)
        last = grams[-1]
        if last == " ":
            grams, capital = " ", False
            if ch == " ":
                continue  # add_char returns; the lone " " gives no gram
        elif len(grams) >= NGram.N_GRAM:
            grams = grams[1:]
        grams += ch
        if ch.isupper():
            if last.isupper():
                capital = True
        else:
            capital = False
        if capital:
            continue
        for n in range(1, NGram.N_GRAM + 1):
            if len(grams) < n:
                break
            gram = grams[-n:]
            if gram != " " and gram in profiles:
                result.append(gram)
    return tuple(result)


def detect_batch(texts: list[str]) -> list[tuple[str, float] | None]:
    """(language, probability) of langdetect's top answer per text; None where langdetect
    raises (no usable n-grams) or has no language above its 0.1 threshold."""
    from curation import langdetect_kernel  # numba (~130 MB of LLVM) loads only where captions are tagged

    fac = factory()
    langlist = fac.langlist
    profiles = _profiles(fac)
    results: list[tuple[str, float] | None] = [None] * len(texts)
    rows, parts, counts = [], [], []
    for t, text in enumerate(texts):
        found = _gram_rows(text, fac, profiles)
        n = sum(len(part) for part in found)
        if n:
            rows.append(t)
            parts.extend(found)
            counts.append(n)
    if not rows:
        return results

    flat = np.concatenate(parts)
    table = profiles.table
    count = np.array(counts, dtype=np.int64)
    offset = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
    shift = np.array([32 - int(n).bit_length() for n in count], dtype=np.uint64)
    probs = np.zeros((len(rows), len(langlist)))
    todo = np.arange(len(rows), dtype=np.int64)
    length = _STREAM_START
    while len(todo):
        stream = _stream(length)
        done = langdetect_kernel.detect_rows(todo, flat, offset, count, shift, table, stream.outputs,
                                             stream.z_first, stream.z_second, _COMPENSATED_SUM, probs)
        todo = todo[~done]  # rows that read past the stream's end: rerun on a longer one
        length *= 4

    for r, t in enumerate(rows):
        best, best_p = None, None
        for lang, p in zip(langlist, probs[r].tolist()):
            if p > PROB_THRESHOLD and (best_p is None or p > best_p):
                best, best_p = lang, p
        results[t] = None if best is None else (best, best_p)
    return results
