"""Language tagging with langdetect, deterministic and cheaper per record.

langdetect draws random n-grams; ``DetectorFactory.seed = 0`` makes its answer a pure
function of the text, which is what lets us cache it: web alt-texts repeat a lot
("image", product names, emoji names), and a cached answer is the same answer.
Texts with no letters at all are ``und`` without calling langdetect (it would raise).
"""

from __future__ import annotations

from functools import lru_cache

import regex
from langdetect import DetectorFactory, detector_factory
from langdetect.lang_detect_exception import LangDetectException

UNDETERMINED = "und"
_HAS_LETTER = regex.compile(r"\p{L}")


def _factory():
    DetectorFactory.seed = 0
    detector_factory.init_factory()
    return detector_factory._factory


@lru_cache(maxsize=200_000)
def detect(text: str) -> tuple[str, float]:
    """(language, probability) of a normalised caption; ``("und", 0.0)`` when it cannot tell."""
    if not _HAS_LETTER.search(text):
        return UNDETERMINED, 0.0
    detector = _factory().create()
    detector.append(text)
    try:
        best = detector.get_probabilities()[0]
    except (LangDetectException, IndexError):
        return UNDETERMINED, 0.0
    return best.lang, float(best.prob)


def tag(text: str, min_prob: float) -> tuple[str, float]:
    lang, prob = detect(text)
    return (lang if prob >= min_prob else UNDETERMINED), prob
