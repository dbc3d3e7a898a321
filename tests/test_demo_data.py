"""The demo data is real, licensed per row, and sampled the same way every time."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from curation.demo_captions import BOILERPLATE_SHARED, DEFAULT_CAPTION_RULE, EVAL_CAPTION_RULE, caption_of
from curation.demo_data import LICENSES, openclipart_rows, write_url_list


def test_catalogue_has_both_sources_with_licences_and_captions(demo_data):
    catalogue = pd.read_parquet(demo_data.catalogue)
    counts = catalogue["source"].value_counts().to_dict()
    assert counts["openclipart"] > 8000 and counts["emoji"] > 1800
    assert (catalogue["license"] == catalogue["source"].map(LICENSES)).all()
    assert catalogue["caption"].str.strip().str.len().gt(0).all()
    for path in catalogue["path"].sample(20, random_state=0):
        assert (demo_data.cache / path).is_file()
    smile = catalogue[catalogue["path"].str.endswith("/1f600.png")].iloc[0]
    assert smile["caption"] == "grinning face" and smile["category"] == "Smileys & Emotion"


def test_mnist_digits_are_written_as_image_folders(demo_data):
    files = sorted(demo_data.mnist_dir.glob("*/*.png"))
    assert len(files) == 10_000
    assert sorted({f.parent.name for f in files}) == [str(d) for d in range(10)]
    with Image.open(files[0]) as image:
        assert image.size == (28, 28) and image.mode == "L"


def test_url_list_sample_is_deterministic(demo_data, tmp_path):
    a = write_url_list(demo_data.catalogue, "http://127.0.0.1:1", tmp_path / "a.parquet", per_source=25)
    b = write_url_list(demo_data.catalogue, "http://127.0.0.1:1", tmp_path / "b.parquet", per_source=25)
    frame_a, frame_b = pd.read_parquet(a), pd.read_parquet(b)
    assert frame_a.equals(frame_b)
    assert frame_a["source"].value_counts().to_dict() == {"emoji": 25, "openclipart": 25}
    assert list(frame_a.columns) == ["url", "caption", "source", "license", "category", "keywords", "caption_rule"]
    assert frame_a["url"].str.startswith("http://127.0.0.1:1/").all()


def _svg(title: str, description: str, keywords: list[str]) -> str:
    items = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
    return ('<svg xmlns="http://www.w3.org/2000/svg" xmlns:cc="http://web.resource.org/cc/" '
            'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f'<metadata><rdf:RDF><cc:Work><dc:title>{title}</dc:title><dc:description>{description}</dc:description>'
            f'<dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject></cc:Work></rdf:RDF></metadata></svg>')


def test_a_description_is_boilerplate_only_when_more_than_ten_drawings_share_it(tmp_path):
    """BOILERPLATE_SHARED = 10: a description on 10 drawings is kept by title+keywords, one on 11 is not."""
    drawings = [(f"ten{i}", "Drawn by  Someone") for i in range(BOILERPLATE_SHARED)]
    drawings += [(f"eleven{i}", "drawn by someone else") for i in range(BOILERPLATE_SHARED + 1)]
    for name, description in drawings:
        (tmp_path / "png" / "animals").mkdir(parents=True, exist_ok=True)
        (tmp_path / "svg" / "animals").mkdir(parents=True, exist_ok=True)
        (tmp_path / "png" / "animals" / f"{name}.png").write_bytes(b"")
        # the second group varies case and spacing: sharing is counted on folded text
        shown = description.upper() if name.endswith("0") else description
        (tmp_path / "svg" / "animals" / f"{name}.svg").write_text(_svg(f"Cat {name}", shown, ["cat", "pet"]))
    rows = {row["title"]: row for row in openclipart_rows(tmp_path)}
    assert len(rows) == len(drawings)
    assert not rows["Cat ten3"]["description_boilerplate"] and rows["Cat eleven3"]["description_boilerplate"]
    assert caption_of(rows["Cat ten3"], "title+keywords") == "Cat ten3. Drawn by Someone. pet"
    assert caption_of(rows["Cat eleven3"], "title+keywords") == "Cat eleven3. pet"
    # the old rule keeps every description that is not the title again
    assert caption_of(rows["Cat eleven3"], "title+description") == "Cat eleven3. drawn by someone else"


def test_keywords_in_a_caption():
    row = {"title": "Red  Apple", "description": "HASH(0x89b1318)", "description_boilerplate": False,
           "keywords": "apple,food,Fruit,fruit,hash,HASH(0x8a9443c),signs_and_symbols,red", "caption": ""}
    # title words, repeats (any case) and the export's Perl references go; "_" reads as a space
    assert caption_of(row, "title+keywords") == "Red Apple. food, Fruit, signs and symbols"
    assert caption_of(row, "title+description") == "Red Apple. HASH(0x89b1318)"
    assert caption_of({**row, "keywords": ""}, "title+keywords") == "Red Apple"
    emoji = {"title": "", "description": "", "keywords": "grinning", "caption": "grinning face"}
    assert caption_of(emoji, "title+keywords") == "grinning face"  # an emoji is its name under every rule
    with pytest.raises(ValueError, match="not one of"):
        caption_of(row, "keywords")


def test_catalogue_records_its_caption_rule_and_eval_captions_stay_fixed(demo_data, tmp_path):
    catalogue = pd.read_parquet(demo_data.catalogue)
    assert (catalogue["caption_rule"] == DEFAULT_CAPTION_RULE).all()
    rows = catalogue.to_dict("records")
    assert [r["caption"] for r in rows] == [caption_of(r, DEFAULT_CAPTION_RULE) for r in rows]
    clipart = pd.read_csv(demo_data.cache / "evalset-clipart.csv")
    by_path = {r["path"]: r for r in rows}
    assert list(clipart["caption"]) == [caption_of(by_path[p], EVAL_CAPTION_RULE) for p in clipart["image"]]
    url_list = pd.read_parquet(write_url_list(demo_data.catalogue, "http://127.0.0.1:1", tmp_path / "kw.parquet",
                                              per_source=50, caption_rule="title+keywords"))
    assert (url_list["caption_rule"] == "title+keywords").all()
    keyworded = url_list[url_list["source"] == "openclipart"]
    with_keywords = keyworded[keyworded["keywords"].str.len() > 0]
    # some drawing's keyword shows up in its caption; boilerplate descriptions do not
    assert any(k.split(",")[-1].replace("_", " ").lower() in c.lower()
               for k, c in zip(with_keywords["keywords"], with_keywords["caption"]))
    boilerplate = catalogue[catalogue["description_boilerplate"]]
    assert len(boilerplate) > 100  # real: "EPS converted from http://aiga.org" and the like
    for row in boilerplate.head(50).to_dict("records"):
        assert row["description"] not in caption_of(row, "title+keywords")
