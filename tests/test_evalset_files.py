"""Eval sets declared in a TOML file: the README's worked example, run through the CLI on real
openclipart drawings (index, audit report), and the checks that refuse a bad declaration."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from curation.shards import write_shard
from dedup import evalsets
from dedup.evalset_files import read_declarations
from dedup.phash import hash_image_bytes
from flows.cli import main as litflow
from infra.contract import empty_pair
from tests.demo_shards import write_corpus_json

README = Path(__file__).resolve().parent.parent / "README.md"
LABELS = {"animals": "an animal", "buildings": "a building"}


def readme_toml() -> str:
    """The TOML block that follows the worked-example marker in the README."""
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- worked example: evalsets.toml.*?-->\s*```toml\n(.*?)```", text, re.S)
    assert found, "the README's worked example is gone"
    return found.group(1)


def bucket(key: str) -> int:
    """The split rule, written out: first 32 bits of sha256(key), mod 100."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100


def _drawing(path: Path) -> Image.Image:
    image = Image.open(path).convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB").resize((128, 128))


def _small(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.rglob("*.png")) if p.stat().st_size < 100_000]


@pytest.fixture(scope="module")
def my_evals(demo_data, tmp_path_factory) -> Path:
    """The README's layout: icons/<label>/*.png with labels.txt, photos/ with captions.csv."""
    root = tmp_path_factory.mktemp("my-evals")
    clip = demo_data.cache / "openclipart" / "png"
    for label in LABELS:
        (root / "icons" / label).mkdir(parents=True)
        for n, path in enumerate(_small(clip / label)[:12]):
            _drawing(path).save(root / "icons" / label / f"{n:03d}.png")
    (root / "icons" / "labels.txt").write_text("".join(f"{k}\t{v}\n" for k, v in LABELS.items()))
    (root / "photos").mkdir()
    with open(root / "photos" / "captions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption", "lang"])
        for n, path in enumerate(_small(clip / "food")[:6]):
            _drawing(path).save(root / "photos" / f"{n}.jpg", quality=92)
            writer.writerow([f"{n}.jpg", f"food drawing {n}", "en"])
            writer.writerow([f"{n}.jpg", f"Zeichnung {n}", "de"])
    (root / "evalsets.toml").write_text(readme_toml(), encoding="utf-8")
    return root


def test_the_readme_declaration_builds_the_sets(my_evals):
    icons, photos = evalsets.select(None, [my_evals / "evalsets.toml"])
    assert (icons.name, icons.task, photos.name, photos.task) == ("icons", "classification", "photos", "retrieval")
    keys = sorted(f"{label}/{p.name}" for label in LABELS for p in (my_evals / "icons" / label).glob("*.png"))
    test = {i.key for i in icons.items("test")}
    train = {i.key for i in icons.items("train")}
    assert test == {k for k in keys if bucket(k) < 30}
    assert train == {k for k in keys if bucket(k) >= 30}
    assert test and train  # 24 keys: both splits have some
    assert icons.labels.display == tuple(LABELS.values())
    assert icons.classes("test", icons.items("test")).labels == tuple(LABELS)
    items = photos.items("test")
    assert len(items) == 6
    assert [(c.text, c.lang) for c in items[0].texts()] == [("food drawing 0", "en"), ("Zeichnung 0", "de")]
    assert items[0].ref == str(my_evals / "photos" / "0.jpg")


def test_index_and_audit_from_the_file_with_no_python(my_evals, demo_data, tmp_path):
    toml = str(my_evals / "evalsets.toml")
    assert litflow(["dedup", "index", "--evalsets", toml, "--out", str(tmp_path / "index")]) == 0
    index = json.loads((tmp_path / "index" / "index.json").read_text())
    assert set(index["sets"]) == {"icons", "photos"}  # the file's sets, not the demo's
    icons = evalsets.select(["icons"], [toml])[0]
    test_icon, train_icon = icons.items("test")[0], icons.items("train")[0]
    # a corpus holding JPEG copies of one test icon, one train icon and one photo, and three other drawings
    copies = {"copy-test-icon": test_icon.ref, "copy-train-icon": train_icon.ref,
              "copy-photo": str(my_evals / "photos" / "2.jpg")}
    others = {f"other-{n}": p for n, p in enumerate(_small(demo_data.cache / "openclipart/png/education")[:3])}
    samples = []
    for key, path in sorted({**copies, **others}.items()):
        buffer = io.BytesIO()
        _drawing(Path(path)).save(buffer, "JPEG", quality=90)
        data = buffer.getvalue()
        samples.append((empty_pair(key=key, caption=key, phash=hash_image_bytes(data)[0], status="kept"), data))
    write_shard(tmp_path / "corpus", "00000", samples)
    write_corpus_json(tmp_path / "corpus")

    assert litflow(["dedup", "report", str(tmp_path / "corpus"), str(tmp_path / "audit"),
                    "--index", str(tmp_path / "index"), "--mode", "test"]) == 0
    matches = pd.read_parquet(tmp_path / "audit" / "matches.parquet")
    flagged = matches[matches["flagged"]]
    assert set(zip(flagged["key"], flagged["eval_set"], flagged["eval_key"])) >= {
        ("copy-test-icon", "icons", test_icon.key), ("copy-train-icon", "icons", train_icon.key),
        ("copy-photo", "photos", "2.jpg")}
    # mode test: the train-split icon's copy is shown but not removed
    assert set(matches.loc[matches["removed"], "key"]) == {"copy-test-icon", "copy-photo"}


@pytest.mark.parametrize("body, message", [
    ('[s]\nsplitz = []\nsource = { image_folder = "x" }\n', r"s.*splitz.*Extra inputs are not permitted"),
    ('[s]\nsource = { image_folder = "x" }\nsplits = [{ name = "t", rol = "test" }]\n', r"splits\.0\.rol"),
    ('[s]\nsource = { image_folder = "x", captions = "c.csv" }\nsplits = [{ name = "t" }]\n',
     "exactly one of image_folder, captions, shards"),
    ('[s]\nsource = { image_folder = "x" }\nsplits = [{ name = "t", hash_range = [30, 30] }]\n', "0 <= lo < hi <= 100"),
    ('[s]\nsource = { image_folder = "x" }\nsplits = [{ name = "t", role = "val" }]\n', "role"),
    ('[s]\nsplits = [{ name = "t" }]\n', "have no source"),
    ('[s]\ntask = "retrieval"\nlabels = ["a"]\nsource = { image_folder = "x" }\nsplits = [{ name = "t" }]\n',
     "retrieval set has captions, not labels"),
    ('s = 1\n', "not a table"),
    ('[s\n', "not valid TOML"),
])
def test_a_bad_declaration_is_refused_naming_the_file_and_key(tmp_path, body, message):
    path = tmp_path / "sets.toml"
    path.write_text(body)
    with pytest.raises(ValueError, match=message) as err:
        read_declarations(path)
    assert str(path) in str(err.value)


def test_a_name_declared_twice_is_an_error_and_a_missing_name_lists_the_known(tmp_path):
    for name in ("a.toml", "b.toml"):
        (tmp_path / name).write_text('[same]\nsource = { image_folder = "x" }\nsplits = [{ name = "t" }]\n')
    with pytest.raises(ValueError, match="'same' is declared in more than one"):
        evalsets.select(None, [tmp_path / "a.toml", tmp_path / "b.toml"])
    with pytest.raises(KeyError, match="unknown eval set 'nope'.*same"):
        evalsets.select(["nope"], [tmp_path / "a.toml"])


def test_the_demo_sets_come_from_the_shipped_file(demo_data):
    assert set(read_declarations(evalsets.DEMO_FILE)) == {"mnist", "emoji", "clipart"}
    assert {"mnist", "emoji", "clipart"} <= set(evalsets.names())
    emoji = evalsets.get("emoji")
    assert emoji.labels.source == str(evalsets.DEMO_FILE.resolve())
    # the emoji split follows the declared rule on the file-name keys
    assert all(bucket(i.key) < 50 for i in emoji.items("test"))
    assert all(bucket(i.key) >= 50 for i in emoji.items("train"))
