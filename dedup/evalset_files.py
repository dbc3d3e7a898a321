"""Eval sets declared in a TOML file, so that a user adds one without writing Python.

One table per set; a path is relative to the file, or starts with ``{cache}/`` for litflow's
data cache (``$LITFLOW_CACHE``, default ``PROJECT/.cache``)::

    [flowers]                                   # the set's name
    task = "classification"                     # or "retrieval" (captions)
    description = "my labelled photos"
    source = { image_folder = "flowers" }       # flowers/<label>/<image>
    prompts = ["generic"]                       # prompt sets (training.prompts), first is primary
    labels_file = "flowers/labels.txt"          # optional: label<TAB>name per line (or labels = [...])
    splits = [
      { name = "train", role = "train", hash_range = [20, 100] },
      { name = "test",  role = "test",  hash_range = [0, 20] },
    ]

A source is exactly one of ``image_folder``, ``captions`` (CSV/TSV/JSONL with ``image`` and
``caption`` columns, optionally ``label``, ``lang`` and ``key``; the column names can be
changed) or ``shards`` (webdataset tars). A split may name its own ``source``; otherwise it
takes the set's. ``hash_range = [lo, hi]`` keeps the items whose key hash bucket
(sha256 of the key, first 32 bits, mod 100) is in ``[lo, hi)``: a split cut that never moves an
image when others are added. Unknown keys are refused with the file and the key named.

pydantic models do the checking; :mod:`infra.config_files` reads the file.
Memory: the declarations only; no image is read until a split's items are asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from dedup.evalsets import (CaptionsFile, EvalSet, ImageFolder, LabelSpace, Partition, Source, Split,
                            WebDatasetShards)
from infra.config_files import problems, read_toml
from infra.paths import default_cache_dir

CACHE_PREFIX = "{cache}/"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceDecl(_Strict):
    image_folder: str | None = None
    captions: str | None = None
    image_column: str = "image"
    caption_column: str = "caption"
    label_column: str | None = "label"   # used when the file has it
    lang_column: str | None = "lang"     # used when the file has it
    key_column: str | None = None        # None: the image path is the key
    shards: list[str] | None = None

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [n for n in ("image_folder", "captions", "shards") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"a source is exactly one of image_folder, captions, shards (got {given or 'none'})")
        if self.captions is None and any(
                getattr(self, n) != SourceDecl.model_fields[n].default
                for n in ("image_column", "caption_column", "label_column", "lang_column", "key_column")):
            raise ValueError("column names only apply to a captions source")
        return self


class SplitDecl(_Strict):
    name: str
    role: Literal["train", "test"] = "test"
    source: SourceDecl | None = None
    hash_range: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _range(self):
        if self.hash_range is not None:
            lo, hi = self.hash_range
            if not 0 <= lo < hi <= 100:
                raise ValueError(f"hash_range {list(self.hash_range)}: need 0 <= lo < hi <= 100")
        return self


class EvalSetDecl(_Strict):
    task: Literal["classification", "retrieval"] = "classification"
    description: str = ""
    source: SourceDecl | None = None
    splits: list[SplitDecl]
    labels: list[str] | None = None
    label_names: list[str] | None = None
    labels_file: str | None = None
    prompts: list[str] = ["generic"]

    @model_validator(mode="after")
    def _consistent(self):
        if not self.splits:
            raise ValueError("no splits")
        missing = [s.name for s in self.splits if s.source is None and self.source is None]
        if missing:
            raise ValueError(f"split(s) {missing} have no source, and the set declares none")
        if self.labels_file is not None and self.labels is not None:
            raise ValueError("give labels or labels_file, not both")
        if self.label_names is not None and self.labels is None:
            raise ValueError("label_names needs labels")
        if self.task == "retrieval" and (self.labels or self.labels_file):
            raise ValueError("a retrieval set has captions, not labels")
        return self


def _path(value: str, base: Path) -> Path:
    if value.startswith(CACHE_PREFIX):
        path = default_cache_dir() / value[len(CACHE_PREFIX):]
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing from litflow's data cache: fetch the demo data first "
                                    "(litflow demo-data fetch)")
        return path
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _source(decl: SourceDecl, base: Path) -> Source:
    if decl.image_folder is not None:
        return ImageFolder(str(_path(decl.image_folder, base)))
    if decl.captions is not None:
        return CaptionsFile(str(_path(decl.captions, base)), decl.image_column, decl.caption_column,
                            decl.label_column, decl.lang_column, decl.key_column)
    return WebDatasetShards(tuple(str(_path(s, base)) for s in decl.shards))


def _build(name: str, decl: EvalSetDecl, base: Path, where: str) -> EvalSet:
    splits = []
    for split in decl.splits:
        source = _source(split.source or decl.source, base)
        if split.hash_range is not None:
            source = Partition(source, *split.hash_range)
        splits.append(Split(split.name, source, split.role))
    labels = None
    if decl.labels_file is not None:
        labels = LabelSpace.from_file(_path(decl.labels_file, base))
    elif decl.labels is not None:
        labels = LabelSpace(tuple(decl.labels), tuple(decl.label_names) if decl.label_names else None, source=where)
    return EvalSet(name, tuple(splits), description=decl.description, task=decl.task, labels=labels,
                   prompts=tuple(decl.prompts))


def read_declarations(path: str | Path) -> dict[str, EvalSetDecl]:
    """The validated declarations of a file, by set name (nothing but the file is read)."""
    path = Path(path)
    raw = read_toml(path, "eval sets file")
    if not raw:
        raise ValueError(f"{path}: declares no eval sets")
    decls = {}
    for name, body in raw.items():
        if not isinstance(body, dict):
            raise ValueError(f"{path}: {name!r} is not a table: each eval set is a [name] table")
        try:
            decls[name] = EvalSetDecl.model_validate(body)
        except ValidationError as err:
            raise ValueError(f"{path}: eval set {name!r}: {problems(err)}") from None
    return decls


def declared_sets(path: str | Path) -> dict[str, Callable[[], EvalSet]]:
    """A factory per set declared in the file: the set is built (and its paths checked) when asked for."""
    path = Path(path).resolve()
    decls = read_declarations(path)
    return {name: (lambda name=name, decl=decl: _build(name, decl, path.parent, str(path)))
            for name, decl in decls.items()}
