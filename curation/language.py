"""Language tagging with langdetect's answers: deterministic, batched and cached.

langdetect draws random n-grams; ``DetectorFactory.seed = 0`` makes its answer a pure
function of the text. That allows two exact savings, measured in ``bench/bench_curate.py``:
a per-process cache (web alt-texts repeat: "image", product names, emoji names) and the
batched engine of :mod:`curation.langdetect_batch`, which computes langdetect's own answer
for many captions at once. Texts with no letters are ``und`` without a detector run.
"""

from __future__ import annotations

import regex

from curation.langdetect_batch import detect_batch

UNDETERMINED = "und"
_HAS_LETTER = regex.compile(r"\p{L}")
_CACHE: dict[str, tuple[str, float]] = {}
_CACHE_LIMIT = 200_000


def detect_many(texts: list[str]) -> list[tuple[str, float]]:
    """langdetect's (language, probability) per text; ``("und", 0.0)`` where it cannot tell."""
    todo = sorted({t for t in texts if t not in _CACHE and _HAS_LETTER.search(t)})
    if todo:
        if len(_CACHE) + len(todo) > _CACHE_LIMIT:
            _CACHE.clear()
        for text, answer in zip(todo, detect_batch(todo)):
            _CACHE[text] = answer if answer is not None else (UNDETERMINED, 0.0)
    return [_CACHE.get(t, (UNDETERMINED, 0.0)) for t in texts]


def detect(text: str) -> tuple[str, float]:
    return detect_many([text])[0]


def tag_many(texts: list[str], min_prob: float) -> list[tuple[str, float]]:
    """Like :func:`detect_many`, with ``und`` below ``min_prob`` (the probability is kept)."""
    return [(lang if prob >= min_prob else UNDETERMINED, prob) for lang, prob in detect_many(texts)]


def clear_cache() -> None:
    _CACHE.clear()
