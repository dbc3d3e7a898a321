"""The held-out split of bench/bench_multilingual.py: by emoji concept (hexcode), never by
pair, so no held-out emoji has its image or any of its names in training; an emoji is used
only when it has a name in every language; emojibase's hexcodes are matched with and
without the emoji-presentation selector FE0F. Built here from generated files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_multilingual as bm  # noqa: E402


def _write(cache: Path, emojibase: Path, codes: list[str], missing_in: dict[str, str]) -> None:
    entries = []
    for code in codes:
        image = f"{code.lower()}.png"
        path = cache / "emoji" / "img" / "google" / "64" / image
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64), "white").save(path)
        entries.append({"unified": code, "image": image, "has_img_google": True, "category": "Symbols",
                        "name": f"emoji {code}", "sort_order": len(entries)})
    (cache / "emoji" / "emoji.json").write_text(json.dumps(entries))
    for lang in bm.LANGS:
        data = [{"hexcode": code.replace("-FE0F", ""), "label": f"{lang} name of {code}"}
                for code in codes if missing_in.get(code) != lang]
        (emojibase / lang).mkdir(parents=True, exist_ok=True)
        (emojibase / lang / "data.json").write_text(json.dumps(data))


def test_split_by_concept_and_names_in_every_language(tmp_path):
    from dedup.evalset_files import declared_sets

    codes = [f"1F{n:03X}" for n in range(300)] + ["2764-FE0F"]
    cache, emojibase = tmp_path / "cache", tmp_path / "emojibase"
    _write(cache, emojibase, codes, missing_in={"1F000": "ja"})
    rows = bm.concepts(cache, emojibase)
    assert "1F000" not in {r["hexcode"] for r in rows}       # no Japanese name: left out
    assert "2764-FE0F" in {r["hexcode"] for r in rows}       # matched without its FE0F
    assert len(rows) == 300
    held = [r for r in rows if bm.held_out(r["hexcode"])]
    # the rule is a hash bucket below 20 of 100: about a fifth, and the same on every call
    assert 0.12 < len(held) / len(rows) < 0.28
    assert [r["hexcode"] for r in held] == [r["hexcode"] for r in bm.concepts(cache, emojibase)
                                            if bm.held_out(r["hexcode"])]

    toml = bm.heldout_set(tmp_path / "work", cache, held)
    (make,) = declared_sets(toml).values()
    items = list(make().splits[0].source.items())
    assert sorted(i.key for i in items) == sorted(r["hexcode"] for r in held)
    for item in items:  # one image per concept, its name in each language, tagged
        assert sorted(c.lang for c in item.texts()) == sorted(bm.LANGS)
        assert {c.text for c in item.texts()} == {f"{lang} name of {item.key}" for lang in bm.LANGS}
