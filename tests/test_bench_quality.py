"""The held-out icon set of bench/bench_quality.py: labels follow its fixed name rules (first
match wins), captions are the name's words, and one image per theme and name is the largest
PNG up to 256 px. Built here from a small generated theme folder."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_quality  # noqa: E402


def label(name: str) -> str | None:
    return next((lab for lab, _, rule in bench_quality.CLASSES if re.search(rule, name)), None)


def test_the_label_rules_first_match_wins():
    assert label("battery-caution-charging") == "battery"
    assert label("folder-music") == "folder"          # a folder, though "music" is in the name
    assert label("user-trash-full") == "trash"        # not a person: "user-" alone is no rule
    assert label("non-starred") == label("starred") == "star"
    assert label("system-lock-screen") == label("emblem-unlocked") == "padlock"
    assert label("blocks") is None and label("clock") == "clock"   # "lock" only as a whole word
    assert label("edit-find-replace") == "magnifier"
    assert label("document-save") is None              # unlabelled icons stay out of zero-shot


def test_heldout_sets_from_a_theme_folder(tmp_path, monkeypatch):
    root = tmp_path / "pkg"
    for size in (16, 48, 512):
        for name in ("printer", "document-save", "printer-symbolic"):
            path = root / f"usr/share/icons/t/{size}x{size}/devices/{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (size, size), "white").save(path)
    monkeypatch.setattr(bench_quality, "THEMES", ("theme-a",))
    monkeypatch.setattr(bench_quality, "package", lambda name: root)
    toml = bench_quality.heldout_sets(tmp_path / "work")
    from dedup.evalset_files import read_declarations

    assert set(read_declarations(toml)) == {"icons", "icon-names"}
    with open(toml.parent / "icons.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["key"], r["label"]) for r in rows] == [("theme-a/printer", "printer")]
    assert "/48x48/" in rows[0]["image"]  # the largest up to 256 px, not the 512
    with open(toml.parent / "icon-names.csv") as handle:
        captions = sorted(r["caption"] for r in csv.DictReader(handle))
    assert captions == ["document save", "printer"]  # -symbolic glyphs left out


def test_the_tuning_score_reads_only_the_tuning_split():
    def row(variant, balanced, i2t, t2i, heldout=0.9):
        return {"variant": variant, "tuning": {"emoji": {"balanced_top1": balanced},
                                               "clipart": {"i2t_R@1": i2t, "t2i_R@1": t2i}},
                "heldout": {"icons": {"balanced_top1": heldout}}}
    rows = [row("a", 0.30, 0.10, 0.20), row("a", 0.20, 0.10, 0.20), row("b", 0.35, 0.0, 0.0, heldout=0.0)]
    lines = bench_quality.tuning_scores(rows)
    # a: mean of 100 * (0.30 + 0.15) and 100 * (0.20 + 0.15) = 40.0; b: 35.0 (its held-out 0 is not read)
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["a", "b"]
    assert lines[1].strip() == "a: 40.0 (2 seeds)" and lines[2].strip() == "b: 35.0 (1 seed)"
