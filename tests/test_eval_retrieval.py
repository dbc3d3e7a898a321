"""Retrieval recall on hand-checked cases (several captions per image), per language, and bad sets."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from curation.demo_data import udhr_texts
from dedup import evalsets
from dedup.evalsets import CaptionsFile, EvalSet, ImageFolder, LabelSpace, MalformedEvalSet, Split
from training.evaluate import evaluate_model
from training.image_towers import Preprocess
from training.retrieval import recall, recall_by_language

E = torch.eye(3)


def test_recall_hand_checked_with_several_captions_per_image():
    images = E
    captions = torch.tensor([
        [1, 0, 0],      # c0, image 0: image 0 is nearest                         -> t2i rank 0
        [0, 1, 0],      # c1, image 0: image 1 nearest, then 0 and 2 tie (0 first) -> rank 1
        [0, 1, 0.1],    # c2, image 1: image 1 nearest                            -> rank 0
        [0, 0, 1],      # c3, image 2                                             -> rank 0
        [1, 0, 0.5],    # c4, image 2: image 0 (0.89) before image 2 (0.45)       -> rank 1
        [0, 1, 0],      # c5, image 2: image 1, then the tie 0/2 (0 first)        -> rank 2
    ], dtype=torch.float32)
    owner = torch.tensor([0, 0, 1, 2, 2, 2])
    result = recall(images, captions, owner, ks=(1, 2, 3))
    # text->image ranks [0, 1, 0, 0, 1, 2]
    assert result["text_to_image"] == {"R@1": 3 / 6, "R@2": 5 / 6, "R@3": 1.0}
    # image->text, best rank among the image's own captions:
    #   image 0: c0 is its most similar caption                           -> 0
    #   image 1: c1 and c5 (cos 1, gallery order) come before its c2       -> 2
    #   image 2: c3 first                                                  -> 0
    assert result["image_to_text"] == {"R@1": pytest.approx(2 / 3), "R@2": pytest.approx(2 / 3), "R@3": 1.0}
    assert (result["images"], result["captions"], result["image_queries"]) == (3, 6, 3)
    # the default ks are 1, 5, 10: with 3 images everything is within 5
    assert recall(images, captions, owner)["text_to_image"] == {"R@1": 0.5, "R@5": 1.0, "R@10": 1.0}


def test_recall_rejects_owners_that_are_not_images():
    with pytest.raises(ValueError, match="owner is not an image"):
        recall(E, E, torch.tensor([0, 1, 3]))


def test_recall_by_language_splits_queries_and_gallery():
    images = E
    # English captions match their image; German ones point at the next image, away from their own
    # (negative cosine: no tie with the other German caption); image 2 has no German caption
    texts = torch.stack([E[0], E[1], E[2], E[1] - 0.1 * E[0], E[2] - 0.1 * E[1]])
    owner = torch.tensor([0, 1, 2, 0, 1])
    langs = ["en", "en", "en", "de", "de"]
    by_lang = recall_by_language(images, texts, owner, langs, ks=(1,))
    assert by_lang["en"]["text_to_image"] == {"R@1": 1.0} and by_lang["en"]["image_to_text"] == {"R@1": 1.0}
    assert by_lang["de"]["text_to_image"] == {"R@1": 0.0} and by_lang["de"]["image_to_text"] == {"R@1": 0.0}
    assert by_lang["de"]["image_queries"] == 2 and by_lang["en"]["image_queries"] == 3
    assert by_lang["de"]["images"] == 3  # every image stays in the gallery


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


class LookupModel:
    """Images: mean colour; texts: a vector looked up per caption (the test decides what agrees)."""

    preprocess = Preprocess(size=8, mean=(0, 0, 0), std=(1, 1, 1))
    image_fingerprint = "lookup"
    info = {"mode": "test", "step": 0}

    def __init__(self, table: dict[str, torch.Tensor]):
        self.table = table

    def image_features(self, pixels):
        return pixels.mean((2, 3)) - 0.5

    def embed_features(self, features):
        return F.normalize(features, dim=-1)

    def encode_texts(self, texts):
        return torch.stack([self.table[t] for t in texts])


def _colour_vector(rgb) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32) / 255 - 0.5


def _assert_no_near_ties(rows: list[dict], table: dict[str, torch.Tensor], margin: float = 1e-3):
    """Every ranking the test's expectations rest on is decided by more than ``margin`` in
    cosine, so float rounding (which differs between CPUs) cannot flip it."""
    images = {row["image"]: F.normalize(_colour_vector(COLOURS[row["image"][:-4]]), dim=0) for row in rows}
    for row in rows:
        text = F.normalize(table[row["caption"]], dim=0)
        cosines = sorted((float(text @ vector) for vector in images.values()), reverse=True)
        assert cosines[0] - cosines[1] > margin, f"{row['caption']!r}: images tie"
    for name, vector in images.items():
        own = [float(F.normalize(table[r["caption"]], dim=0) @ vector) for r in rows if r["image"] == name]
        other = [float(F.normalize(table[r["caption"]], dim=0) @ vector) for r in rows if r["image"] != name]
        assert all(abs(o - c) > margin for o in other for c in own), f"{name}: captions tie"


def test_per_language_results_from_a_captions_file_with_a_language_column(demo_data, tmp_path):
    udhr = udhr_texts(demo_data.udhr_dir)
    titles = {lang: udhr[udhr["lang"] == lang]["title"].iloc[0] for lang in ("en", "ru", "ar")}
    # a Russian caption points at the *next* colour. Consecutive colours must not be near-opposite
    # (blue and yellow are, after centring): next + 0.1 * own would then be parallel to next, and
    # its cosine with that image would tie with 1.0 to the last bit, rounding differently per CPU
    colours = ["red", "blue", "green", "yellow"]
    rows, table = [], {}
    for i, colour in enumerate(colours):
        Image.new("RGB", (16, 16), COLOURS[colour]).save(tmp_path / f"{colour}.png")
        for lang in ("en", "ru", "ar"):
            if lang == "ar" and colour == "yellow":
                continue  # one image without an Arabic caption
            caption = f"{titles[lang]} ({colour})"
            rows.append({"image": f"{colour}.png", "caption": caption, "lang": lang})
            # en and ar captions agree with their image; ru ones point (mostly) at the next colour
            vector = _colour_vector(COLOURS[colour])
            if lang == "ru":
                vector = _colour_vector(COLOURS[colours[(i + 1) % len(colours)]]) + 0.1 * vector
            table[caption] = vector
    _assert_no_near_ties(rows, table)
    with open(tmp_path / "captions.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["image", "caption", "lang"])
        writer.writeheader()
        writer.writerows(rows)
    source = CaptionsFile(str(tmp_path / "captions.csv"))
    items = list(source.items())
    assert [len(i.texts()) for i in items] == [3, 3, 3, 2]  # rows of one image become one item
    evalsets.register("udhr-colours", EvalSet("udhr-colours", (Split("test", source),), task="retrieval"))
    try:
        result = evaluate_model(LookupModel(table), ["udhr-colours"])["sets"]["udhr-colours"]
    finally:
        evalsets.unregister("udhr-colours")
    by_lang = result["by_language"]
    assert set(by_lang) == {"en", "ru", "ar"}
    for lang in ("en", "ar"):
        assert by_lang[lang]["text_to_image"]["R@1"] == 1.0 and by_lang[lang]["image_to_text"]["R@1"] == 1.0
    assert by_lang["ru"]["text_to_image"]["R@1"] == 0.0 and by_lang["ru"]["image_to_text"]["R@1"] == 0.0
    assert by_lang["ar"]["image_queries"] == 3 and by_lang["en"]["image_queries"] == 4
    # all languages together: 4 of 11 captions (the Russian ones) miss; every image's English caption
    # (cosine 1) comes before any Russian caption pointing at it (cosine < 1)
    assert result["all"]["text_to_image"]["R@1"] == pytest.approx(7 / 11)
    assert result["all"]["image_to_text"]["R@1"] == 1.0


# ---- malformed sets: a clear error naming what is wrong -------------------------------------


def _register(name: str, evalset: EvalSet):
    evalsets.register(name, evalset, replace=True)


@pytest.fixture
def cleanup():
    yield
    for name in ("bad-missing", "bad-empty", "bad-labels", "bad-decode"):
        evalsets.unregister(name)


def _images(root, classes=("red", "green")):
    for colour in classes:
        (root / colour).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), COLOURS[colour]).save(root / colour / "0.png")


def test_missing_images_are_named(tmp_path, cleanup):
    Image.new("RGB", (16, 16), COLOURS["red"]).save(tmp_path / "here.png")
    (tmp_path / "c.csv").write_text("image,caption\nhere.png,a red square\ngone.png,a missing square\n")
    _register("bad-missing", EvalSet("bad-missing", (Split("test", CaptionsFile(str(tmp_path / "c.csv"))),),
                                     task="retrieval"))
    with pytest.raises(MalformedEvalSet, match=r"'bad-missing' split 'test'.*1 of 2 image\(s\) missing.*gone\.png"):
        evaluate_model(LookupModel({}), ["bad-missing"])


def test_empty_class_folder_is_named(tmp_path, cleanup):
    _images(tmp_path)
    (tmp_path / "blue").mkdir()
    _register("bad-empty", EvalSet("bad-empty", (Split("test", ImageFolder(str(tmp_path))),)))
    with pytest.raises(MalformedEvalSet, match=r"class folder\(s\) with no images: \['blue'\]"):
        evaluate_model(LookupModel({}), ["bad-empty"])


def test_unknown_class_in_a_labels_file_is_named(tmp_path, cleanup):
    _images(tmp_path / "img", ("red", "green", "blue"))
    (tmp_path / "classes.txt").write_text("# label<TAB>name\nred\tred square\ngreen\tgreen square\n")
    labels = LabelSpace.from_file(tmp_path / "classes.txt")
    assert labels.display == ("red square", "green square")
    _register("bad-labels", EvalSet("bad-labels", (Split("test", ImageFolder(str(tmp_path / "img"))),), labels=labels))
    with pytest.raises(MalformedEvalSet, match=r"1 image\(s\) with a label not in the label space "
                                               r"\(.*classes\.txt\): 'blue/0\.png' has label 'blue'"):
        evaluate_model(LookupModel({}), ["bad-labels"])


def test_undecodable_image_is_named(tmp_path, cleanup):
    _images(tmp_path)
    (tmp_path / "red" / "1.png").write_bytes(b"<html>not a png</html>")
    _register("bad-decode", EvalSet("bad-decode", (Split("test", ImageFolder(str(tmp_path))),)))
    with pytest.raises(MalformedEvalSet, match=r"1 image\(s\) do not decode: red/1\.png"):
        evaluate_model(LookupModel({}), ["bad-decode"])


def test_conflicting_labels_for_one_image_are_named(tmp_path):
    (tmp_path / "c.csv").write_text("image,caption,label\na.png,x,cat\na.png,y,dog\n")
    with pytest.raises(ValueError, match=r"row 2: image 'a\.png' has label 'dog' here and 'cat'"):
        list(CaptionsFile(str(tmp_path / "c.csv"), label_column="label").items())
