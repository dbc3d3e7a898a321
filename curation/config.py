"""Curation configuration: every rule and threshold, as data, with two presets.

Like big_vision's configs, a preset is a plain function returning the config tree; any rule
can be switched off (``enabled=False``) or re-thresholded from a TOML file (``--config``, with
``[text]``-style sections and an optional ``preset``) or the command line
(``--set text.max_words=30``). Every value is validated (pydantic) and an unknown section or
field is an error that names it. The whole tree is written into the run manifest.

Presets:

* ``align`` — ALIGN (Jia et al. 2021) as published: shorter side > 200 px, aspect ratio < 3,
  drop images with > 1000 alt-texts; drop alt-texts shared by > 10 images, with a token
  outside the K most frequent unigrams/bigrams, or with < 3 or > 20 unigrams.
* ``lit-relaxed`` — ours. LiT kept ALIGN's image filters and used "simpler text-based
  filtering" without publishing it. For a *multilingual* corpus we keep the
  language-neutral text rules and drop the ones that penalise languages rather than noise:
  alt-texts shared by > 10 images are still dropped (boilerplate such as "image" or
  "click here" in any language); at least 1 unigram (a short caption in Chinese is still a
  caption) and at most 64 (LiT truncates to 16 tokens anyway, so long captions cost
  little); no rare-token filter — on a corpus that is mostly English, the tokens of
  low-resource languages are exactly the "rare" ones, so that rule removes languages,
  not junk.

Both presets leave duplicates *inside* the corpus alone (``corpus_dedup.remove="none"``: the
ALIGN and LiT papers describe removing only near-duplicates of evaluation images). Removing
them is an option: ``--set corpus_dedup.remove="exact"`` (same image bytes) or ``"near"``
(pHash within ``corpus_dedup.radius`` bits, grouped transitively); the first key of a group
is kept and the others are rejected as ``corpus_duplicate``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dedup.modes import EvalMode
from infra.config_files import read_toml


class _Rules(BaseModel):
    # unknown keys are refused, and every assignment (presets, --set) is type-checked
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class DecodeRules(_Rules):
    max_pixels: int = 89_478_485            # Pillow's own decompression-bomb threshold
    jpeg_quality: int = 95                  # when an image must be re-encoded


class ImageRules(_Rules):
    min_side_enabled: bool = True
    min_side: int = 200                     # keep when shorter side of the ORIGINAL > min_side
    aspect_enabled: bool = True
    max_aspect: float = 3.0                 # keep when long/short < max_aspect
    max_texts_enabled: bool = True
    max_texts_per_image: int = 1000         # drop images (by content hash) with > N alt-texts


class TextRules(_Rules):
    max_chars: int = 4096                   # bound on a normalised caption
    too_long: Literal["truncate", "reject"] = "truncate"  # at a word boundary, or reject the pair
    min_words_enabled: bool = True
    min_words: int = 3                      # keep when unigrams >= min_words
    max_words_enabled: bool = True
    max_words: int = 20                     # keep when unigrams <= max_words
    chars_per_word_unsegmented: float = 4.0  # Thai, Lao, Khmer, Myanmar: see curation.text
    max_images_per_text_enabled: bool = True
    max_images_per_text: int = 10           # drop alt-texts shared by > N distinct images
    rare_tokens_enabled: bool = True
    rare_tokens_top_k: int | None = None    # K; None = scale ALIGN's 100M per 1.8B pairs
    rare_tokens_per_pair: float = 100e6 / 1.8e9
    rare_tokens_min_k: int = 1000           # floor for small corpora


class LanguageRules(_Rules):
    enabled: bool = True
    min_prob: float = 0.5                   # below: "und"
    tag_rejected: bool = False              # also tag rejected captions (per-language audit of
                                            # what the filters drop; costs langdetect on all)
    allow: list[str] = Field(default_factory=list)  # empty = every language


class EvalDedupRules(_Rules):
    index: str | None = None                # folder written by `litflow dedup index`; None: off
    mode: EvalMode = "train+test"           # none | test | train+test (dedup.modes)
    radius: int = 8                         # Hamming radius on the 64-bit pHash (and its mirror)
    verify: bool = True                     # confirm pHash candidates geometrically (dedup.verify)
    max_candidates: int = 8                 # nearest pHash candidates verified per record


class CorpusDedupRules(_Rules):
    remove: Literal["none", "exact", "near"] = "none"  # exact: same sha256; near: pHash radius
    radius: int = Field(4, ge=0, le=64)     # Hamming radius for "near" (dedup report's default)
    rounds: int = 8                         # min-label propagation rounds for "near" (see curation.corpus_dedup)


class OutputRules(_Rules):
    shard_size: int = 1000


class CurationConfig(_Rules):
    preset: str = "align"
    decode: DecodeRules = Field(default_factory=DecodeRules)
    image: ImageRules = Field(default_factory=ImageRules)
    text: TextRules = Field(default_factory=TextRules)
    language: LanguageRules = Field(default_factory=LanguageRules)
    eval_dedup: EvalDedupRules = Field(default_factory=EvalDedupRules)
    corpus_dedup: CorpusDedupRules = Field(default_factory=CorpusDedupRules)
    output: OutputRules = Field(default_factory=OutputRules)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def rare_tokens_k(self, pairs: int) -> int:
        if self.text.rare_tokens_top_k is not None:
            return self.text.rare_tokens_top_k
        return max(self.text.rare_tokens_min_k, math.ceil(self.text.rare_tokens_per_pair * pairs))

    def override(self, assignment: str) -> "CurationConfig":
        """Apply ``section.field=value`` (value parsed as JSON when it parses, else a string)."""
        path, sep, raw = assignment.partition("=")
        section_name, dot, field_name = path.strip().partition(".")
        if not sep or not dot:
            raise ValueError(f"override {assignment!r}: expected section.field=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        self._set(section_name, field_name, value, f"override {assignment!r}")
        return self

    def _set(self, section_name: str, field_name: str, value, where: str) -> None:
        sections = [n for n in type(self).model_fields if n != "preset"]
        if section_name not in sections:
            raise ValueError(f"{where}: unknown section {section_name!r}; one of {sections}")
        section = getattr(self, section_name)
        names = sorted(type(section).model_fields)
        if field_name not in names:
            raise ValueError(f"{where}: {section_name} has no field {field_name!r} "
                             f"(you probably got a typo); fields: {names}")
        try:
            setattr(section, field_name, value)
        except ValidationError as err:
            problem = "; ".join(e["msg"] for e in err.errors())
            raise ValueError(f"{where}: {section_name}.{field_name}: {problem}") from None


def align() -> CurationConfig:
    return CurationConfig(preset="align")


def lit_relaxed() -> CurationConfig:
    config = CurationConfig(preset="lit-relaxed")
    config.text.min_words = 1
    config.text.max_words = 64
    config.text.rare_tokens_enabled = False
    return config


PRESETS = {"align": align, "lit-relaxed": lit_relaxed}


def load_config(preset: str | None = "align", overrides: list[str] | tuple[str, ...] = (),
                file: str | Path | None = None) -> CurationConfig:
    """A preset, then the rules of a TOML ``file`` (``[section]`` tables; may name its ``preset``),
    then ``overrides`` (``--set section.field=value``); every value is validated."""
    rules = read_toml(file, "curation config") if file is not None else {}
    named = rules.pop("preset", None)
    preset = named if preset is None else preset
    preset = preset or "align"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = PRESETS[preset]()
    for section_name, fields in rules.items():
        if not isinstance(fields, dict):
            raise ValueError(f"{file}: {section_name!r} is not a [section] table")
        for field_name, value in fields.items():
            config._set(section_name, field_name, value, str(file))
    for assignment in overrides:
        config.override(assignment)
    return config
