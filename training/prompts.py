"""Prompt sets for zero-shot classification: templates (and optional class names) per language.

A prompt set is data: a name, a language, templates with one ``{}`` for the class name, and
optionally class names in that language (label -> name) overriding the eval set's own names.
Shipped: ``imagenet80`` (the 80 templates OpenAI published with CLIP for ImageNet, re-typed
from the CLIP repository's ``notebooks/Prompt_Engineering_for_ImageNet.ipynb``), ``generic``
(a short English set), ``generic-de`` / ``generic-fr`` / ``generic-es`` (the same in German,
French and Spanish), ``mnist`` (CLIP's MNIST template) and ``emoji``. More come from JSON
files (:func:`load_prompt_file`): ``{"name", "lang", "templates": [...], "classnames": {...}}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class PromptSet:
    name: str
    lang: str
    templates: tuple[str, ...]
    classnames: dict[str, str] = field(default_factory=dict)  # label -> name; missing: the set's name

    def __post_init__(self):
        if not self.templates:
            raise ValueError(f"prompt set {self.name!r} has no templates")
        bad = [t for t in self.templates if t.count("{}") != 1]
        if bad:
            raise ValueError(f"prompt set {self.name!r}: each template needs exactly one '{{}}', not {bad[:3]!r}")

    def prompts(self, label: str, default_name: str) -> list[str]:
        name = self.classnames.get(label, default_name)
        return [t.format(name) for t in self.templates]

    def to_dict(self) -> dict:
        return {"name": self.name, "lang": self.lang, "templates": list(self.templates),
                "classnames": dict(self.classnames)}


IMAGENET_TEMPLATES = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

_SHIPPED = (
    PromptSet("imagenet80", "en", IMAGENET_TEMPLATES),
    PromptSet("generic", "en", ("a photo of a {}.", "a drawing of a {}.", "an image of {}.", "a picture of {}.",
                                "{}.")),
    PromptSet("bare", "en", ("{}",)),  # the class name alone: the no-prompt baseline of prompt studies
    PromptSet("generic-de", "de", ("ein Foto von {}.", "eine Zeichnung von {}.", "ein Bild von {}.", "{}.")),
    PromptSet("generic-fr", "fr", ("une photo de {}.", "un dessin de {}.", "une image de {}.", "{}.")),
    PromptSet("generic-es", "es", ("una foto de {}.", "un dibujo de {}.", "una imagen de {}.", "{}.")),
    PromptSet("mnist", "en", ('a photo of the number: "{}".',)),
    PromptSet("emoji", "en", ("an emoji of {}.", "a {} emoji.", "an icon of {}.", "a cartoon of {}.")),
)
PROMPT_SETS: dict[str, PromptSet] = {p.name: p for p in _SHIPPED}


def load_prompt_file(path: str | Path) -> PromptSet:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"prompt file {path}: unreadable ({err})") from None
    missing = [k for k in ("lang", "templates") if k not in data]
    if missing:
        raise ValueError(f"prompt file {path}: missing {missing}")
    return PromptSet(str(data.get("name", path.stem)), str(data["lang"]), tuple(data["templates"]),
                     {str(k): str(v) for k, v in data.get("classnames", {}).items()})


def get_prompt_set(spec: str) -> PromptSet:
    """A shipped prompt set by name, or a JSON file by path."""
    if spec in PROMPT_SETS:
        return PROMPT_SETS[spec]
    if spec.endswith(".json") or Path(spec).is_file():
        return load_prompt_file(spec)
    raise ValueError(f"unknown prompt set {spec!r}; shipped: {', '.join(sorted(PROMPT_SETS))} (or a .json file)")
