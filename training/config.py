"""The training run's configuration: one validated model, loaded from a file, flags and ``--set``.

A run file is TOML (or the JSON a run writes as ``OUT/config.json``) with the fields below at
the top level and the text tower under ``[text]``::

    mode = "LU"
    image_tower = "efficientnet-lite0"
    cache = "work/models/embeddings"
    steps = 220
    lr = 1e-3
    freeze = ['text\\..*']     # lock the pretrained text tower too: only the heads learn
    [text]
    name = "minilm"

``--set KEY=VALUE`` (``text.name=scratch``, ``lr=3e-4``) overrides a field; values are read
as JSON when they parse, else as strings. An unknown key is an error that names it, as
big_vision's config does ("you probably got a typo"). The resolved config, every default
included, is written to the run folder (``config.json``) and can be given back with
``--config`` to repeat the run.

``freeze`` are regular expressions over the model's parameter names (``text.*``, for MiniLM
``text.model.encoder.layer.0.*``, ``text_head.weight``, ``image.*``, ``temperature.*``;
big_vision's ``('img/.*', None)``),
matched in full; a pattern that matches no parameter is an error. Freezing is in addition to
what the mode locks.

**Modes are LiT's two letters**, image tower then text tower: ``L`` locked pretrained, ``U``
unlocked from pretrained weights, ``u`` unlocked from scratch. The text tower's start follows
from its letter: ``LU`` (the default) fine-tunes the pretrained MiniLM under a locked image
tower, ``Lu`` trains a scratch text tower (``text.name = "scratch"``, LiT's Table 2 with ``Uu``
and ``uu``), ``LL`` keeps both towers locked and trains only the heads and the temperature (the
frozen-text baseline). A pretrained text tower named with a ``u`` mode, or ``scratch`` with an
``L``/``U`` one, is refused: the letters and the tower would disagree. Runs trained before the
letters meant this (a ``u`` text letter with a pretrained tower) load as what they were, ``U``.
With no mode given, a ``scratch`` text tower makes it ``Lu``.

Memory: the config only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator,
)

from infra.config_files import problems, read_toml

TEMPERATURE_INIT = 10.0  # big_vision / LiT: t = exp(log 10) at the start, learned in log space

DEFAULT_MAX_TOKENS = 16  # LiT truncates captions to 16 tokens
# LiT's letters, image tower then text tower: L locked pretrained, U unlocked pretrained, u scratch
Mode = Literal["LU", "Lu", "LL", "UU", "Uu", "UL", "uU", "uu", "uL"]


def parse_fill(value) -> tuple[int, int, int]:
    """An RGB fill colour from ``'#rrggbb'``, ``'R,G,B'`` or three integers 0-255."""
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]  # a repeatable flag given once: --image-fill '#000000'
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("#") and len(text) == 7:
            try:
                return tuple(int(text[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
            except ValueError:
                pass
        value = text.split(",")
    try:
        rgb = tuple(int(str(c).strip()) for c in value)
    except (TypeError, ValueError):
        rgb = ()
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"a fill colour is '#rrggbb', 'R,G,B' or three integers 0-255, not {value!r}")
    return rgb  # type: ignore[return-value]


class TextSpec(BaseModel):
    """What identifies a text tower (stored in checkpoints; a mismatch on resume is an error)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("minilm", description="minilm | bert:<path> | scratch")
    max_tokens: int = Field(DEFAULT_MAX_TOKENS, gt=0, description="tokens kept per caption (LiT: 16)")
    width: int = Field(256, gt=0, description="scratch tower width")
    depth: int = Field(4, gt=0, description="scratch tower layers")
    heads: int = Field(4, gt=0, description="scratch tower attention heads")
    vocab_size: int = Field(8000, gt=0, description="scratch tokenizer vocabulary")

class TrainConfig(BaseModel):
    """Everything a training run depends on; the CLI flags and the Prefect form are made from it.

    ``mode`` is LiT's two letters (module docstring): its text letter decides whether the text
    tower starts pretrained (``L``/``U``, default ``minilm``) or from scratch (``u``, ``scratch``).
    """

    model_config = ConfigDict(extra="forbid")

    shards: list[str] = Field(description="curated shard folders or NAME.tar files")
    out: str = Field(description="run folder (checkpoint, metrics, tokenizer, config.json)")
    mode: Mode = Field("LU", description="LiT's letters, image tower then text tower: L locked pretrained, U "
                       "unlocked from pretrained, u unlocked from scratch (LU: locked image tower, MiniLM "
                       "fine-tuned; Lu/Uu/uu: LiT's Table 2 with a scratch text tower; LL: only the heads learn)")
    image_tower: str = Field("efficientnet-lite0", description="efficientnet-lite0 | vit-s-focus | hf:<path> | tiny")
    image_source: Literal["cache", "images"] = Field(
        "cache", description="a locked image tower (L?) only: cached embeddings, or run the tower on every batch")
    cache: str | None = Field(None, description="embedding cache root (a locked image tower from the cache; "
                              "`litflow embed`)")
    text: TextSpec = Field(default_factory=TextSpec, description="the text tower (name, max_tokens, scratch sizes)")
    embed_dim: int | None = Field(None, gt=0, description="shared embedding size (default: the image feature size)")
    image_head: bool = Field(False, description="a linear head on the image side too")
    text_head: bool = Field(True, description="a linear head on the text side (without one, sizes must match)")
    freeze: list[str] = Field(default_factory=list, json_schema_extra={"metavar": "PATTERN"},
                              description="regular expressions over parameter names to keep frozen, e.g. "
                              "'text\\..*' (the whole text tower; repeatable)")
    lr_mults: list[tuple[str, float]] = Field(default_factory=list, description=(
        "(pattern, multiplier) pairs: parameters whose full name matches learn at lr x multiplier, first match "
        "wins (big_vision's lr_mults), e.g. [['text\\.model\\..*', 0.05]] for a pretrained text tower under a "
        "fresh head; set with --set lr_mults='[[\"text\\\\..*\", 0.05]]' or in a run file"))
    # 0.05: picked on the tuning split of bench/bench_quality.py (README, Evaluation); 1 forgot more
    text_lr_mult: float = Field(0.05, gt=0, description=(
        "a pretrained text tower fine-tuned (mode ?U) learns at lr x this, its head and the temperature at lr "
        "(applied after lr_mults, which win where they match); 1: one rate for all"))
    batch_size: int = Field(256, gt=0, description="global batch (split over ranks)")
    steps: int = Field(1000, ge=0, description="optimisation steps")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float | None = Field(None, ge=0, description="default 0 with a locked image tower (as LiT), "
                                       "1e-4 otherwise")
    warmup: int = Field(100, ge=0, description="linear warm-up steps, then cosine decay to zero")
    clip: float = Field(1.0, gt=0, description="gradient norm clipping")
    temperature_init: float = Field(
        TEMPERATURE_INIT, gt=0, description="the learned temperature t (logits = t x cosine) at step 0, learned in "
        "log space; LiT/big_vision start at 10, CLIP at 1/0.07")
    seed: int = Field(0, description="seed of initialisation, shuffling and tokenizer training")
    shuffle_buffer: int = Field(1000, gt=0, description="pairs held for shuffling, per reader")
    workers: int = Field(0, ge=0, description="data loader workers per rank")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 on a CUDA device that supports it, else fp32")
    checkpoint_every: int = Field(100, gt=0, description="steps between checkpoints")
    checkpoint_minutes: float | None = Field(
        10.0, gt=0, description="also checkpoint when this many minutes passed since the last one (a run "
        "stopped before `checkpoint_every` steps keeps its work); null (--set checkpoint_minutes=null): by steps "
        "only")
    micro_batch: int | None = Field(
        None, gt=0, description="pairs per forward/backward pass on each rank; the loss stays over the whole "
        "global batch (features first without gradients, then each micro-batch again with them: GradCache). "
        "Bounds activation memory for Uu/uu; none: the rank's whole batch at once")
    image_fit: Literal["crop", "pad"] = Field(
        "crop", description="how a non-square image becomes the tower's square: crop (shorter side to size, "
        "centre crop) or pad (longer side to size, centred on image_fill). Part of the tower's fingerprint: the "
        "embedding cache must be made with the same choice")
    image_fill: tuple[int, int, int] = Field((255, 255, 255), description="RGB of the padding (image_fit pad): "
                                             "'#rrggbb', 'R,G,B' or three integers")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    stop_after: int | None = Field(None, gt=0, description="end this session after N steps (preemptible jobs); "
                                   "not part of the run's identity")
    exclude: list[str] = Field(default_factory=list, json_schema_extra={"metavar": "FILE"}, description=(
        "parquet file with a 'key' column (e.g. dedup's eval_flags.parquet): pairs with those curated keys are "
        "skipped, shards untouched; other columns ignored. Repeatable. The key set is part of the run's identity: "
        "resuming with another set is refused"))

    @field_validator("shards", "exclude", "freeze", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        if isinstance(value, (str, Path)):
            value = [value]
        return [str(v) for v in value or []]

    @field_validator("image_fill", mode="before")
    @classmethod
    def _fill(cls, value):
        return parse_fill(value)

    @field_validator("shards")
    @classmethod
    def _some_shards(cls, value):
        if not value:
            raise ValueError("no shards given")
        return value

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo):
        scratch = self.text.name == "scratch"
        if scratch and "mode" not in self.model_fields_set:
            self.mode = "Lu"  # no mode given: the text letter follows the tower named (LU becomes Lu)
        if self.text_letter == "u" and not scratch:
            if (info.context or {}).get("trained_run"):
                # trained before the second letter chose the text tower's start: it was a fine-tuned one
                self.mode = f"{self.image_letter}U"
            elif "name" in self.text.model_fields_set:
                raise ValueError(f"mode {self.mode} trains the text tower from scratch (LiT's u), but "
                                 f"text.name={self.text.name!r} is a pretrained tower: give text.name=scratch, or "
                                 f"mode {self.image_letter}U to fine-tune it ({self.image_letter}L to keep it locked)")
            else:
                self.text = self.text.model_copy(update={"name": "scratch"})
        elif self.text_letter in "LU" and scratch:
            raise ValueError(f"mode {self.mode} starts the text tower from pretrained weights (LiT's "
                             f"{self.text_letter}), but text.name='scratch' has none: mode {self.image_letter}u trains "
                             "a scratch text tower")
        if not self.image_locked and self.image_source == "cache":
            self.image_source = "images"  # a trained image tower needs pixels
        if self.image_locked and self.image_source == "cache" and not self.cache:
            raise ValueError(f"mode {self.mode} from the cache needs cache (run `litflow embed` first)")
        if self.weight_decay is None:
            self.weight_decay = 0.0 if self.image_locked else 1e-4
        return self

    @property
    def image_letter(self) -> str:
        return self.mode[0]

    @property
    def text_letter(self) -> str:
        return self.mode[1]

    @property
    def image_locked(self) -> bool:
        return self.image_letter == "L"

    @property
    def image_pretrained(self) -> bool:
        return self.image_letter != "u"

    @property
    def text_locked(self) -> bool:
        return self.text_letter == "L"

    @property
    def text_lr_rules(self) -> list[tuple[str, float]]:
        """``text_lr_mult`` as an lr rule over the whole text tower, when it is a pretrained one
        being fine-tuned; applied after ``lr_mults``, so an explicit rule wins where it matches."""
        if self.text_letter == "U" and self.text_lr_mult != 1.0:
            return [(r"text\..*", self.text_lr_mult)]
        return []

    def identity(self, world: int, tokenizer_sha: str | None, excluded: frozenset[str] = frozenset()) -> dict:
        """The fields that define a run; a checkpoint with other values cannot be resumed.

        ``excluded`` (the keys loaded from ``exclude``) enters as its size and the sha256 of the
        sorted keys, only when not empty: runs without exclusions keep their earlier identity,
        and so does ``freeze``.
        """
        from training.exclusions import exclusion_digest

        ident = self.model_dump(mode="json", include=set(IDENTITY_FIELDS))
        ident["shards"] = [str(s) for s in self.shards]
        ident["world"] = world
        ident["tokenizer_sha256"] = tokenizer_sha
        if self.freeze:
            ident["freeze"] = list(self.freeze)
        if self.temperature_init != TEMPERATURE_INIT:  # runs at the default keep their earlier identity
            ident["temperature_init"] = self.temperature_init
        if self.micro_batch is not None:  # changes batch-norm statistics (Uu), so it is part of the run
            ident["micro_batch"] = self.micro_batch
        if self.image_fit != "crop":
            ident["image_fit"], ident["image_fill"] = self.image_fit, list(self.image_fill)
        if self.lr_mults:
            ident["lr_mults"] = [[pattern, mult] for pattern, mult in self.lr_mults]
        if self.text_lr_rules:
            ident["text_lr_mult"] = self.text_lr_mult
        if excluded:
            ident["excluded_keys"] = len(excluded)
            ident["exclude_sha256"] = exclusion_digest(excluded)
        return ident

    @classmethod
    def for_evaluation(cls, identity: dict, run_dir: str | Path) -> "TrainConfig":
        """The model part of a trained run, from its checkpoint's identity, reading pixels."""
        fields = {k: identity[k] for k in ("mode", "image_tower", "embed_dim", "image_head", "text_head", "seed",
                                            "text", "image_fit", "image_fill") if k in identity}
        return cls.model_validate(dict(shards=identity.get("shards") or [str(run_dir)], out=str(run_dir),
                                       image_source="images", freeze=identity.get("freeze", []), **fields),
                                  context={"trained_run": True})


IMAGE_FIT_FIELDS = ("image_fit", "image_fill")  # also flags of `litflow embed` and `litflow dedup flag`

IDENTITY_FIELDS = ("mode", "image_tower", "image_source", "embed_dim", "image_head", "text_head", "batch_size",
                   "steps", "lr", "weight_decay", "warmup", "clip", "seed", "shuffle_buffer", "precision", "text")


def read_run_file(path: str | Path) -> dict:
    """The fields of a run file (TOML, or JSON such as a run's own ``config.json``), unvalidated."""
    return read_toml(path, "run file")


def apply_override(fields: dict, assignment: str) -> dict:
    """``fields`` with ``KEY=VALUE`` applied (``text.name=scratch``); the key must be a config field."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set {assignment!r}: expected KEY=VALUE, e.g. lr=3e-4 or text.name=scratch")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    path = key.strip().split(".")
    known = TrainConfig.model_fields
    if path[0] not in known:
        raise ValueError(f"--set {key}: no such training option (you probably got a typo); options: "
                         f"{', '.join(known)}")
    if len(path) == 2 and path[0] == "text" and path[1] not in TextSpec.model_fields:
        raise ValueError(f"--set {key}: the text tower has no option {path[1]!r}; options: "
                         f"{', '.join(TextSpec.model_fields)}")
    if len(path) > 2 or (len(path) == 2 and path[0] != "text"):
        raise ValueError(f"--set {key}: only text.* options are nested")
    merged = dict(fields)
    if len(path) == 1:
        merged[path[0]] = value
    else:
        text = merged.get("text") or {}
        merged["text"] = {**(text.model_dump() if isinstance(text, TextSpec) else text), path[1]: value}
    return merged


def load_train_config(file: str | Path | None = None, fields: dict | None = None,
                      overrides: list[str] | tuple = ()) -> TrainConfig:
    """Defaults < the run file < ``fields`` (flags) < ``overrides`` (``--set``), validated once."""
    merged = read_run_file(file) if file else {}
    where = f" in {file}" if file else ""
    for key, value in (fields or {}).items():
        if key == "text" and isinstance(value, dict):
            merged["text"] = {**(merged.get("text") or {}), **value}
        else:
            merged[key] = value
    for assignment in overrides:
        merged = apply_override(merged, assignment)
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as err:
        raise ValueError(f"training config{where}: {problems(err)}") from None
