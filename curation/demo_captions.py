"""How the demo's openclipart captions are built from an SVG's title, description and keywords.

Rules (an emoji's caption is its name under every rule):

* ``title+description`` — the title, then the description when it is not the title again. What
  the demo has always used, and what the ``clipart`` eval set's captions are (kept fixed, so
  that retrieval figures stay comparable across training-caption rules).
* ``title+keywords`` — the title, the description only when it is not boilerplate, then the
  keywords ("School Hallway. education, building, study"). A description is boilerplate when
  more than :data:`BOILERPLATE_SHARED` drawings share it (whitespace and case folded): "eps
  converted from http://aiga.org" ×243, an author's e-mail address ×127. 10 is the threshold
  ALIGN's own text-frequency rule uses. Keywords drop openclipart's ``unsorted`` placeholder,
  repeats, words the title already has and the export's Perl references ("HASH(0x89b1318)",
  and a bare "hash" on 1,924 icon-theme drawings), which also blank a description; ``_`` reads
  as a space.

Kept apart from :mod:`curation.demo_data` (pandas, Pillow) so that the CLI can offer the rules
without importing those. Memory: one row at a time; :func:`mark_boilerplate` counts the
catalogue's distinct descriptions (about 1,700).
"""

from __future__ import annotations

import re
from collections import Counter

CAPTION_RULES = ("title+description", "title+keywords")
DEFAULT_CAPTION_RULE = "title+description"
EVAL_CAPTION_RULE = "title+description"  # the clipart eval set's captions: fixed, see the module docstring
BOILERPLATE_SHARED = 10  # a description shared by more drawings than this is boilerplate


# openclipart's export wrote some Perl references instead of their text ("HASH(0x89b1318)"), and
# 1,924 icon-theme drawings carry a bare "hash" keyword left from the same bug: not words
_PERL_REFERENCE = re.compile(r"(?i)(hash|array)(\(0x[0-9a-f]+\))?")


def _folded(text: str) -> str:
    return " ".join(text.split()).lower()


def caption_of(row: dict, rule: str) -> str:
    """The caption of one catalogue row (title, description, description_boilerplate, keywords)
    under ``rule``; a row without a title (emoji) keeps its ``caption``."""
    if rule not in CAPTION_RULES:
        raise ValueError(f"caption rule {rule!r}: not one of {', '.join(CAPTION_RULES)}")
    title = " ".join(str(row.get("title") or "").split())
    if not title:
        return row.get("caption") or ""
    description = " ".join(str(row.get("description") or "").split())
    if rule == "title+keywords" and _PERL_REFERENCE.fullmatch(description):
        description = ""
    parts = [title]
    if description and description.lower() != title.lower():
        if rule == "title+description" or not row.get("description_boilerplate"):
            parts.append(description)
    if rule == "title+keywords":
        seen = set(_folded(title).split())
        words = []
        for keyword in str(row.get("keywords") or "").split(","):
            keyword = " ".join(keyword.replace("_", " ").split())
            if keyword and keyword.lower() not in seen and not _PERL_REFERENCE.fullmatch(keyword):
                seen.add(keyword.lower())
                words.append(keyword)
        if words:
            parts.append(", ".join(words))
    return ". ".join(parts)


def mark_boilerplate(rows: list[dict]) -> list[dict]:
    """Set ``description_boilerplate`` on every row: its description is shared by more than
    :data:`BOILERPLATE_SHARED` rows (whitespace and case folded)."""
    shared = Counter(_folded(row["description"]) for row in rows)
    for row in rows:
        row["description_boilerplate"] = bool(row["description"]) and shared[_folded(row["description"])] > BOILERPLATE_SHARED
    return rows
