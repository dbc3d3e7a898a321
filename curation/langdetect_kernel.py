"""The compiled part of :mod:`curation.langdetect_batch`: langdetect's draw loop
(``Detector._detect_block``) transcribed line for line and compiled with numba.

Why numba and not a C extension: it is a maintained package with wheels for every platform
we run on and needs no compiler at install time. Its compiled code is cached on disk
(``cache=True``; ``NUMBA_CACHE_DIR`` moves it), so a worker process loads it (~0.2 s) instead
of compiling it (2–4 s here, once per machine). Why a module of its own: importing numba maps
~130 MB of LLVM into a process (~100 MB of it shared library pages), so it is imported only by
the processes that tag captions, on their first batch.

Exactness: ``*``, ``+`` and ``/`` on float64 compile to single IEEE operations rounded like
Python's (no ``fastmath``: no fused multiply-add, no reordering), and the one reduction is
Python's own ``sum`` order (:func:`python_sum`). The random stream and the Gaussian values are
inputs, computed in Python by the caller.

Memory: two 55-float64 rows of state; everything else belongs to the caller.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from curation.langdetect_batch import ALPHA_DEFAULT, ALPHA_WIDTH, BASE_FREQ, CONV_THRESHOLD, ITERATION_LIMIT, N_TRIAL


@numba.njit(cache=True, nogil=True)
def python_sum(values, compensated):
    """``sum(list_of_floats)`` as CPython computes it: left to right from 0, with Neumaier's
    compensation on 3.12+ (``builtin_sum_impl``: the compensation is added at the end only
    when it is non-zero and finite)."""
    total = 0.0
    c = 0.0
    for x in values:
        t = total + x
        if compensated:
            if abs(total) >= abs(x):
                c += (total - t) + x
            else:
                c += (x - t) + total
        total = t
    if compensated and c != 0.0 and math.isfinite(c):
        total += c
    return total


@numba.njit(cache=True, nogil=True)
def choice(outputs, pos, shift, n):
    """``random.choice`` over n items from read position ``pos``: ``getrandbits(k)`` (the next
    output shifted right by 32 - k, k = n's bit length) until it is below n. Returns the index
    and the new position, or -1 where the stream ends first."""
    while pos < len(outputs):
        pick = np.int64(outputs[pos] >> shift)
        pos += 1
        if pick < n:
            return pick, pos
    return -1, pos


@numba.njit(cache=True, nogil=True)
def detect_rows(rows, flat, offset, count, shift, table, outputs, z_first, z_second, compensated, probs):
    """``Detector._detect_block`` for each caption in ``rows``: its n-grams are
    ``flat[offset[r]:offset[r] + count[r]]`` (rows of ``table``); its langprob goes to
    ``probs[r]``. Returns, per row, False where the caption would read past the stream's end
    (its answer is then not written; the caller reruns it on a longer stream)."""
    n_lang = table.shape[1]
    init = 1.0 / n_lang
    done = np.zeros(len(rows), dtype=np.bool_)
    prob = np.empty(n_lang)
    langprob = np.empty(n_lang)
    for k in range(len(rows)):
        r = rows[k]
        pos = 0
        cached, z_cached = False, 0.0
        langprob[:] = 0.0
        ok = True
        for _ in range(N_TRIAL):
            prob[:] = init
            # alpha = self.alpha + self.random.gauss(0.0, 1.0) * self.ALPHA_WIDTH
            if cached:
                z, cached = z_cached, False
            elif pos + 4 <= len(outputs):
                z, z_cached, cached = z_first[pos], z_second[pos], True
                pos += 4
            else:
                ok = False
                break
            alpha = ALPHA_DEFAULT + (0.0 + z * 1.0) * ALPHA_WIDTH
            weight = alpha / BASE_FREQ
            i = 0
            while True:
                pick, pos = choice(outputs, pos, shift[r], count[r])
                if pick < 0:
                    ok = False
                    break
                word = flat[offset[r] + pick]
                for j in range(n_lang):  # _update_lang_prob
                    prob[j] *= weight + table[word, j]
                if i % 5 == 0:
                    sump = python_sum(prob, compensated)  # _normalize_prob
                    for j in range(n_lang):
                        prob[j] = prob[j] / sump
                    # langdetect keeps the largest p and tests it against the threshold; "some p
                    # above it" is the same test, and without the running maximum the
                    # divisions above vectorise (6 % of the loop's time)
                    converged = False
                    for j in range(n_lang):
                        converged |= prob[j] > CONV_THRESHOLD
                    if converged or i >= ITERATION_LIMIT:
                        break
                i += 1
            if not ok:
                break
            for j in range(n_lang):
                langprob[j] += prob[j] / N_TRIAL
        if ok:
            probs[r, :] = langprob
            done[k] = True
    return done
