"""langdetect's own algorithm, run for a batch of captions at once, with identical answers.

Why by hand: langdetect spends ~90 % of its time in two pure-Python loops over its 55
languages (``_update_lang_prob``, ``_normalize_prob``), once per random n-gram draw, ~1,200
draws per caption. No maintained package gives the same answers faster, and the issue asks
for langdetect's answers, cheaper. This module keeps everything that decides the answer —
langdetect's own text cleaning, n-gram extraction, profiles, seed, trial count, alpha, the
convergence test and the float operations in the same order — and only changes *how* the
arithmetic is scheduled: the captions of a batch advance in lock-step as rows of numpy arrays.

Exactness rests on three facts, each checked by ``tests/test_curation_langdetect.py`` against
langdetect on thousands of real captions (demo corpus + UDHR in ~500 languages):

* with ``DetectorFactory.seed = 0`` every detector re-seeds ``random.Random(0)``, so every
  caption reads the *same* Mersenne Twister output stream: it is generated once
  (``getrandbits(32)``) and each row keeps a read position. ``choice`` is
  ``getrandbits(k) >> (32 - k)`` with rejection, exactly as CPython's ``_randbelow``;
  ``gauss`` is CPython's Box–Muller with its cached second value;
* elementwise ``*``, ``+`` and ``/`` on float64 arrays round exactly like Python floats;
* the one reduction, ``sum(prob)``, is done in Python's order: ``np.add.accumulate`` along
  the row on CPython 3.11 (a running, plain left-to-right addition, unlike ``np.sum``'s
  pairwise one); on 3.12+ ``sum`` compensates rounding, so there the builtin is called per row.

Langdetect's n-gram extraction is also redone here (``_extract_ngrams``), step for step, only
with each character's normalisation looked up once; the test compares it gram for gram.

Memory: one batch's state, (captions × 55) float64 arrays and the batch's distinct n-grams'
profile rows, plus the shared random stream (grown on demand) and a table of normalised
characters (bounded by Unicode).
"""

from __future__ import annotations

import math
import random
import sys
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
_SEQUENTIAL_SUM = sys.version_info < (3, 12)
_LOOKAHEAD = 16
_AHEAD = np.arange(_LOOKAHEAD)


def factory():
    DetectorFactory.seed = 0
    detector_factory.init_factory()
    return detector_factory._factory


@lru_cache(maxsize=1)
def _stream(length: int = 1 << 16) -> np.ndarray:
    """The first ``length`` 32-bit outputs of random.Random(0), as every detector reads them."""
    rng = random.Random(0)
    return np.fromiter((rng.getrandbits(32) for _ in range(length)), dtype=np.uint64, count=length)


class _Stream:
    def __init__(self):
        self.values = _stream()

    def ensure(self, upto: int) -> None:
        if upto >= len(self.values):
            self.values = _stream(max(upto + 1, 2 * len(self.values)))

    def random(self, pos: int) -> float:
        """CPython's random(): 53 bits from two outputs."""
        self.ensure(pos + 2)
        a, b = int(self.values[pos]) >> 5, int(self.values[pos + 1]) >> 6
        return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0)


def ngrams_of(text: str, fac) -> list[str]:
    """langdetect's own preprocessing: append (URL/mail removal, Vietnamese normalisation,
    space folding, length cap), Latin cleaning, n-gram extraction filtered by its profiles."""
    detector = fac.create()
    detector.append(text)
    detector.cleaning_text()
    return _extract_ngrams(detector.text, fac.word_lang_prob_map)


_NORMALISED: dict[str, str] = {}  # bounded by the characters there are


def _extract_ngrams(text: str, profiles: dict) -> list[str]:
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
    return result


def detect_batch(texts: list[str]) -> list[tuple[str, float] | None]:
    """(language, probability) of langdetect's top answer per text; None where langdetect
    raises (no usable n-grams) or has no language above its 0.1 threshold."""
    fac = factory()
    langlist = fac.langlist
    n_lang = len(langlist)
    results: list[tuple[str, float] | None] = [None] * len(texts)
    rows, grams = [], []
    for t, text in enumerate(texts):
        found = ngrams_of(text, fac)
        if found:
            rows.append(t)
            grams.append(found)
    if not rows:
        return results

    vocabulary: dict[str, int] = {}
    flat = np.array([vocabulary.setdefault(g, len(vocabulary)) for found in grams for g in found], dtype=np.int64)
    table = np.array([fac.word_lang_prob_map[g] for g in vocabulary], dtype=np.float64)
    count = np.array([len(found) for found in grams], dtype=np.int64)
    offset = np.concatenate([[0], np.cumsum(count)[:-1]])
    shift = (32 - np.array([int(n).bit_length() for n in count], dtype=np.int64)).astype(np.uint64)

    b = len(rows)
    stream = _Stream()
    pos = np.zeros(b, dtype=np.int64)          # read position in the shared random stream
    gauss_next = [None] * b                    # CPython's cached second Gaussian, per row
    trial = np.zeros(b, dtype=np.int64)
    step = np.zeros(b, dtype=np.int64)         # langdetect's i within the current trial
    weight = np.zeros(b, dtype=np.float64)
    init = 1.0 / n_lang
    prob = np.full((b, n_lang), init)
    langprob = np.zeros((b, n_lang))

    def start_trial(r: int) -> None:
        z = gauss_next[r]
        gauss_next[r] = None
        if z is None:
            p = int(pos[r])
            x2pi = stream.random(p) * _TWOPI
            g2rad = math.sqrt(-2.0 * math.log(1.0 - stream.random(p + 2)))
            z = math.cos(x2pi) * g2rad
            gauss_next[r] = math.sin(x2pi) * g2rad
            pos[r] = p + 4
        alpha = ALPHA_DEFAULT + (0.0 + z * 1.0) * ALPHA_WIDTH
        weight[r] = alpha / BASE_FREQ

    for r in range(b):
        start_trial(r)
    # The state arrays hold the rows still running, in a fixed order; a row that ends its last
    # trial is moved out (its answer kept in `final`), so every step works on whole arrays
    # rather than gathering and scattering the running rows.
    final = np.zeros((b, n_lang))
    row_of = np.arange(b)                      # the batch row each state row is
    count_u = count.astype(np.uint64)
    while len(row_of):
        n = len(row_of)
        every = np.arange(n)
        # choice(ngrams): getrandbits(k) until below n. The next _LOOKAHEAD outputs of every
        # row are tried at once and each row takes its first accepted one (the same one the
        # one-at-a-time loop would reach); a row with none accepted there (p <= 2^-16) goes on alone.
        start = pos.copy()
        stream.ensure(int(start.max()) + _LOOKAHEAD + 1)
        tried = stream.values[start[:, None] + _AHEAD] >> shift[:, None]
        accepted = tried < count_u[:, None]
        first = accepted.argmax(axis=1)
        pick = tried[every, first]
        pos += first + 1
        for r in np.flatnonzero(~accepted[every, first]):
            p = int(start[r]) + _LOOKAHEAD
            stream.ensure(p + 1)
            while (value := int(stream.values[p]) >> int(shift[r])) >= int(count[r]):
                p += 1
                stream.ensure(p + 1)
            pick[r], pos[r] = value, p + 1
        prob *= weight[:, None] + table[flat[offset + pick.astype(np.int64)]]

        checking = np.flatnonzero(step % 5 == 0)
        if len(checking):
            block = prob[checking]
            if _SEQUENTIAL_SUM:
                total = np.add.accumulate(block, axis=1)[:, -1]  # left to right, like sum() on 3.11
            else:
                total = np.array([sum(row) for row in block.tolist()])
            block = block / total[:, None]
            prob[checking] = block
            maxp = np.maximum(block.max(axis=1), 0.0)
            done = checking[(maxp > CONV_THRESHOLD) | (step[checking] >= ITERATION_LIMIT)]
        else:
            done = checking
        step += 1
        if len(done):
            langprob[done] += prob[done] / N_TRIAL
            trial[done] += 1
            for r in done:
                if trial[r] < N_TRIAL:
                    prob[r] = init
                    step[r] = 0
                    start_trial(int(r))
            ended = trial >= N_TRIAL
            if ended.any():
                final[row_of[ended]] = langprob[ended]
                running = ~ended
                row_of, pos, trial, step, weight, prob, langprob, shift, count, count_u, offset = (
                    a[running] for a in (row_of, pos, trial, step, weight, prob, langprob, shift, count, count_u, offset))
                gauss_next = [g for g, keep in zip(gauss_next, running.tolist()) if keep]

    for r, t in enumerate(rows):
        probs = final[r]
        best, best_p = None, None
        for lang, p in zip(langlist, probs.tolist()):
            if p > PROB_THRESHOLD and (best_p is None or p > best_p):
                best, best_p = lang, p
        results[t] = None if best is None else (best, best_p)
    return results
