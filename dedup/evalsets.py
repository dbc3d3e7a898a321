"""Evaluation sets: a name plus named splits of images, read from common layouts, by name.

Used by de-duplication (every image of every split is hashed into the eval index) and by
zero-shot evaluation (labels / captions of the test splits). An eval set is *data*, so it is
declared, not coded: a :class:`Split` pairs a name and a role (``train`` or ``test``, which the
dedup modes select on) with a source:

* :class:`ImageFolder` — ``root/<class>/<image>``; the label is the class folder.
* :class:`CaptionsFile` — CSV or JSONL with an ``image`` path (relative to the file) and a
  ``caption`` (optionally a ``label`` and a ``lang`` column). An image on several rows has
  several captions (how COCO/Flickr-style retrieval sets are written).
* :class:`WebDatasetShards` — ``*.tar`` shards with ``KEY.{jpg,png,...}``, optional
  ``KEY.txt`` (caption) and ``KEY.cls`` / ``KEY.json["label"]`` (label).
* :class:`Listing` — items given in code.

Sets are declared in TOML files (:mod:`dedup.evalset_files`; commands take ``--evalsets FILE``)
or registered in code, and looked up by name (:func:`select`, :func:`get`), as big_vision does
for its evaluators. The demo sets ``mnist``, ``emoji`` and ``clipart`` are declared in the shipped
``dedup/demo_evalsets.toml`` and read the demo cache (``litflow demo-data fetch``). An unreadable image is not dropped here: the item carries its
read error, and the index counts and lists it. A split with no images is an error, and so is
an ImageFolder class folder with no images.

Zero-shot classification needs the set's classes: :class:`LabelSpace` lists the labels in
order with the names prompts use (from code or a labels file); an item whose label is not in
it is an error naming the item and the file (:meth:`EvalSet.classes`). ``prompts`` names the
prompt sets (``training.prompts``) an evaluation uses by default, the first being primary.
"""

from __future__ import annotations

import csv
import hashlib
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

# The one list of image extensions (without the dot), in the order a webdataset sample's image
# member is looked for: curation, the corpus reader, eval sets and the embedding check use it.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")


def image_member(sample: dict) -> str | None:
    """The extension of a webdataset sample's image member (``sample[ext]``), or None."""
    for ext in IMAGE_EXTENSIONS:  # a loop, not next(genexpr): called several times per curated sample
        if ext in sample:
            return ext
    return None


ROLES = ("train", "test")


class EmptyEvalSet(ValueError):
    """An eval set or split with no images: an index built from it would silently match nothing."""


class MalformedEvalSet(ValueError):
    """An eval set whose content contradicts itself: an empty class, an unknown label, a missing image."""


@dataclass(frozen=True)
class Caption:
    text: str
    lang: str | None = None


@dataclass(frozen=True)
class EvalItem:
    """One eval image. ``ref`` says where its bytes are (a file path, or ``shard.tar#member``).

    ``caption`` is the first caption; ``captions`` all of them (with their language) when
    there are several or a language is known.
    """

    key: str
    ref: str
    label: str | None = None
    caption: str | None = None
    captions: tuple[Caption, ...] = ()

    def read(self) -> bytes:
        return read_ref(self.ref)

    def texts(self) -> tuple[Caption, ...]:
        """Every caption of the image (the single ``caption`` when no list was given)."""
        if self.captions:
            return self.captions
        return (Caption(self.caption),) if self.caption is not None else ()


def read_ref(ref: str) -> bytes:
    """The bytes behind an :attr:`EvalItem.ref` (raises OSError / KeyError when unreadable)."""
    if "#" in ref and ref.split("#", 1)[0].endswith(".tar"):
        shard, member = ref.split("#", 1)
        with tarfile.open(shard) as tar:
            handle = tar.extractfile(member)
            if handle is None:
                raise OSError(f"{member} is not a file in {shard}")
            return handle.read()
    return Path(ref).read_bytes()


class Source(Protocol):
    def items(self) -> Iterator[EvalItem]: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class ImageFolder:
    root: str

    def items(self) -> Iterator[EvalItem]:
        root = Path(self.root)
        if not root.is_dir():
            raise FileNotFoundError(f"ImageFolder root {root} does not exist")
        classes = {d.name: [i for i in sorted(d.iterdir()) if i.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS]
                   for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))}
        empty = [name for name, images in classes.items() if not images]
        if empty and len(empty) < len(classes):  # no images at all is an EmptyEvalSet, said by the caller
            raise MalformedEvalSet(f"ImageFolder {root}: class folder(s) with no images: {empty[:5]} "
                                   f"(extensions {', '.join(IMAGE_EXTENSIONS)})")
        for name, images in classes.items():
            for image in images:
                yield EvalItem(f"{name}/{image.name}", str(image), label=name)

    def describe(self) -> str:
        return f"imagefolder:{self.root}"


@dataclass(frozen=True)
class CaptionsFile:
    """CSV (header row) or JSONL; image paths are relative to the file's folder."""

    path: str
    image_column: str = "image"
    caption_column: str = "caption"
    label_column: str | None = None
    lang_column: str | None = "lang"  # used when the file has it
    key_column: str | None = None     # None: the image path is the key

    def _rows(self) -> Iterator[dict]:
        path = Path(self.path)
        if not path.is_file():
            raise FileNotFoundError(f"captions file {path} does not exist")
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            with path.open(encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if line.strip():
                        try:
                            yield json.loads(line)
                        except json.JSONDecodeError as err:
                            raise ValueError(f"{path}:{number}: not JSON ({err})") from None
        elif path.suffix.lower() in (".csv", ".tsv"):
            with path.open(encoding="utf-8", newline="") as handle:
                yield from csv.DictReader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        else:
            raise ValueError(f"captions file {path}: expected .csv, .tsv or .jsonl")

    def items(self) -> Iterator[EvalItem]:
        """One item per image, in first-appearance order; rows repeating an image add captions."""
        base = Path(self.path).parent
        grouped: dict[str, tuple[str | None, list[Caption]]] = {}
        for number, row in enumerate(self._rows(), 1):
            if self.image_column not in row or row[self.image_column] in (None, ""):
                raise ValueError(f"{self.path}: row {number} has no {self.image_column!r} column")
            image = str(row[self.image_column])
            raw_label = row.get(self.label_column) if self.label_column else None
            label = None if raw_label in (None, "") else str(raw_label)
            caption = row.get(self.caption_column)
            lang = row.get(self.lang_column) if self.lang_column else None
            key = image
            if self.key_column:
                if row.get(self.key_column) in (None, ""):
                    raise ValueError(f"{self.path}: row {number} has no {self.key_column!r} (the key column)")
                key = str(row[self.key_column])
            previous = grouped.setdefault(image, (key, label, []))
            if previous[1] != label:
                raise ValueError(f"{self.path}: row {number}: image {image!r} has label {label!r} here "
                                 f"and {previous[1]!r} on an earlier row")
            if previous[0] != key:
                raise ValueError(f"{self.path}: row {number}: image {image!r} has key {key!r} here "
                                 f"and {previous[0]!r} on an earlier row")
            if caption not in (None, ""):
                previous[2].append(Caption(str(caption), None if lang in (None, "") else str(lang)))
        for image, (key, label, captions) in grouped.items():
            yield EvalItem(key, str(base / image), label=label,
                           caption=captions[0].text if captions else None, captions=tuple(captions))

    def describe(self) -> str:
        return f"captions:{self.path}"


@dataclass(frozen=True)
class WebDatasetShards:
    shards: tuple[str, ...]

    def items(self) -> Iterator[EvalItem]:
        if not self.shards:
            raise EmptyEvalSet("WebDatasetShards given no shard paths")
        for shard in self.shards:
            groups: dict[str, dict[str, tarfile.TarInfo]] = {}
            with tarfile.open(shard) as tar:
                members = [m for m in tar.getmembers() if m.isfile()]
                for member in members:
                    key, _, ext = Path(member.name).name.partition(".")
                    groups.setdefault(key, {})[ext.lower()] = member
                for key, files in groups.items():
                    ext = image_member(files)
                    image = files[ext] if ext else None
                    if image is None:
                        continue
                    caption = tar.extractfile(files["txt"]).read().decode("utf-8", "replace") if "txt" in files else None
                    label = None
                    if "cls" in files:
                        label = tar.extractfile(files["cls"]).read().decode().strip()
                    elif "json" in files:
                        try:
                            meta = json.loads(tar.extractfile(files["json"]).read())
                            label = None if meta.get("label") is None else str(meta["label"])
                        except (json.JSONDecodeError, AttributeError):
                            label = None
                    yield EvalItem(f"{Path(shard).stem}/{key}", f"{shard}#{image.name}", label, caption)

    def describe(self) -> str:
        return "webdataset:" + ",".join(self.shards)


@dataclass(frozen=True)
class Listing:
    entries: tuple[EvalItem, ...]
    description: str = "listing"

    def items(self) -> Iterator[EvalItem]:
        return iter(self.entries)

    def describe(self) -> str:
        return self.description


@dataclass(frozen=True)
class Partition:
    """A deterministic share of another source, by a hash of the key (how splits are cut).

    Keeps the items whose bucket, the first 32 bits of sha256(key) mod 100, is in ``[lo, hi)``.
    Hash-based rather than positional so that adding an image never moves another between splits.
    """

    source: Source
    lo: int
    hi: int = 100

    def __post_init__(self):
        if not 0 <= self.lo < self.hi <= 100:
            raise ValueError(f"partition [{self.lo}, {self.hi}): need 0 <= lo < hi <= 100")

    def items(self) -> Iterator[EvalItem]:
        for item in self.source.items():
            if self.lo <= key_bucket(item.key) < self.hi:
                yield item

    def describe(self) -> str:
        return f"hash[{self.lo},{self.hi}):{self.source.describe()}"


def key_bucket(key: str) -> int:
    """0..99 from the key alone: which :class:`Partition` an item falls in."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100


@dataclass(frozen=True)
class Split:
    name: str
    source: Source
    role: str = "test"

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"split {self.name}: role must be one of {ROLES}, got {self.role!r}")


@dataclass(frozen=True)
class LabelSpace:
    """The classes of a classification set, in order, and the name each has in prompts."""

    labels: tuple[str, ...]
    names: tuple[str, ...] | None = None  # None: the labels themselves
    source: str = "code"

    def __post_init__(self):
        if not self.labels:
            raise MalformedEvalSet(f"label space from {self.source} has no labels")
        if len(set(self.labels)) != len(self.labels):
            repeated = sorted({x for x in self.labels if self.labels.count(x) > 1})
            raise MalformedEvalSet(f"label space from {self.source}: labels repeat: {repeated[:5]}")
        if self.names is not None and len(self.names) != len(self.labels):
            raise MalformedEvalSet(f"label space from {self.source}: {len(self.names)} names for {len(self.labels)} labels")

    @property
    def display(self) -> tuple[str, ...]:
        return self.names if self.names is not None else self.labels

    @classmethod
    def from_file(cls, path: str | Path) -> "LabelSpace":
        """A labels file: one class per line, ``label`` or ``label<TAB>name``; ``#`` lines are comments."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"labels file {path} does not exist")
        labels, names = [], []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            label, _, name = line.partition("\t")
            if not label.strip():
                raise MalformedEvalSet(f"{path}:{number}: empty label")
            labels.append(label.strip())
            names.append(name.strip() or label.strip())
        return cls(tuple(labels), tuple(names), source=str(path))


@dataclass(frozen=True)
class EvalSet:
    name: str
    splits: tuple[Split, ...]
    description: str = ""
    task: str = field(default="classification")  # or "retrieval" (captions)
    labels: LabelSpace | None = None  # classification: None means the sorted labels the split carries
    prompts: tuple[str, ...] = ("generic",)  # prompt-set names (training.prompts), first is primary

    def __post_init__(self):
        names = [s.name for s in self.splits]
        if not self.splits:
            raise EmptyEvalSet(f"eval set {self.name!r} has no splits")
        if len(set(names)) != len(names):
            raise ValueError(f"eval set {self.name!r}: split names repeat: {names}")
        if self.task not in ("classification", "retrieval"):
            raise ValueError(f"eval set {self.name!r}: task must be classification or retrieval, not {self.task!r}")

    def split(self, name: str) -> Split:
        for split in self.splits:
            if split.name == name:
                return split
        raise KeyError(f"eval set {self.name!r} has no split {name!r} (has {[s.name for s in self.splits]})")

    def items(self, split: str) -> list[EvalItem]:
        """Every item of a split; an empty split is an :class:`EmptyEvalSet` error."""
        chosen = self.split(split)
        items = list(chosen.source.items())
        if not items:
            raise EmptyEvalSet(f"eval set {self.name!r} split {split!r} has no images ({chosen.source.describe()})")
        keys = [i.key for i in items]
        if len(set(keys)) != len(keys):
            raise ValueError(f"eval set {self.name!r} split {split!r}: duplicate keys")
        return items

    def classes(self, split: str, items: list[EvalItem]) -> LabelSpace:
        """The label space of a classification split, checked against its items.

        Every item needs a label from the space (an unknown label names the item and where the
        labels came from); every class of an ImageFolder has images (checked when reading).
        """
        unlabelled = [i.key for i in items if i.label is None]
        if unlabelled:
            raise MalformedEvalSet(f"eval set {self.name!r} split {split!r}: {len(unlabelled)} image(s) without a "
                                   f"label, e.g. {unlabelled[:3]}")
        if self.labels is None:
            return LabelSpace(tuple(sorted({i.label for i in items})), source=f"labels of split {split!r}")
        known = set(self.labels.labels)
        unknown = [(i.key, i.label) for i in items if i.label not in known]
        if unknown:
            shown = ", ".join(f"{k!r} has label {lab!r}" for k, lab in unknown[:3])
            raise MalformedEvalSet(f"eval set {self.name!r} split {split!r}: {len(unknown)} image(s) with a label not in "
                                   f"the label space ({self.labels.source}): {shown}")
        return self.labels


# The demo sets are declared in a shipped file, reading the demo cache; the file is read on the
# registry's first use, not at import (Beam workers import this module for ``image_member``).
DEMO_FILE = Path(__file__).with_name("demo_evalsets.toml")
_REGISTRY: dict[str, Callable[[], EvalSet]] = {}
_DEMO_SETS_READ = False


def _registry() -> dict[str, Callable[[], EvalSet]]:
    global _DEMO_SETS_READ
    if not _DEMO_SETS_READ:
        _DEMO_SETS_READ = True
        from dedup.evalset_files import declared_sets

        _REGISTRY.update(declared_sets(DEMO_FILE))
    return _REGISTRY


def register(name: str, factory: Callable[[], EvalSet] | EvalSet, *, replace: bool = False) -> None:
    """Register an eval set (or a factory that builds it when first asked for) under ``name``."""
    registry = _registry()
    if name in registry and not replace:
        raise ValueError(f"eval set {name!r} is already registered (pass replace=True)")
    registry[name] = factory if callable(factory) else (lambda: factory)


def unregister(name: str) -> None:
    """Remove a registered set (tests that register temporary sets clean up with this)."""
    _registry().pop(name, None)


def names() -> list[str]:
    return sorted(_registry())


def get(name: str) -> EvalSet:
    registry = _registry()
    if name not in registry:
        raise KeyError(f"unknown eval set {name!r}; registered: {', '.join(names()) or 'none'}")
    evalset = registry[name]()
    if evalset.name != name:
        raise ValueError(f"eval set registered as {name!r} calls itself {evalset.name!r}")
    return evalset


def select(wanted: list[str] | None = None, files: list[str | Path] | tuple = ()) -> list[EvalSet]:
    """The eval sets a command works on.

    With ``files`` (eval-set declaration files, :mod:`dedup.evalset_files`): every set they
    declare, or the ``wanted`` names among them and the registry. Without: the ``wanted`` names
    from the registry, or every registered set. A name declared in two files is an error rather
    than a silent choice; a file's set takes precedence over a registered one of the same name.
    """
    from dedup.evalset_files import declared_sets

    declared: dict[str, Callable[[], EvalSet]] = {}
    for path in files:
        for name, factory in declared_sets(path).items():
            if name in declared:
                raise ValueError(f"eval set {name!r} is declared in more than one of {[str(f) for f in files]}")
            declared[name] = factory
    if wanted is None:
        wanted = sorted(declared) if files else names()
    chosen = []
    for name in wanted:
        if name in declared:
            evalset = declared[name]()
        elif name in _registry():
            evalset = get(name)
        else:
            known = sorted(set(declared) | set(_registry()))
            raise KeyError(f"unknown eval set {name!r}; declared or registered: {', '.join(known) or 'none'}")
        chosen.append(evalset)
    if not chosen:
        raise ValueError("no eval sets declared, registered or named")
    return chosen
