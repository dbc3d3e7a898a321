"""The demo data is real, licensed per row, and sampled the same way every time."""

from __future__ import annotations

import pandas as pd
from PIL import Image

from curation.demo_data import LICENSES, write_url_list


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
    assert list(frame_a.columns) == ["url", "caption", "source", "license", "category", "keywords"]
    assert frame_a["url"].str.startswith("http://127.0.0.1:1/").all()
