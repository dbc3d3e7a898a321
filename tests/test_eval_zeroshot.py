"""Zero-shot classification: the prompt-ensemble rule, agreeing vs shuffled models, per language."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dedup import evalsets
from dedup.evalsets import EvalSet, ImageFolder, LabelSpace, Split
from training.evaluate import evaluate_model, headline
from training.image_towers import Preprocess
from training.prompts import IMAGENET_TEMPLATES, PROMPT_SETS, PromptSet, get_prompt_set
from training.zeroshot import class_embeddings, classify, topk_accuracy


def test_prompt_ensemble_normalises_each_prompt_then_the_mean():
    # class 0's two prompts embed to (3, 0) and (0, 1): normalised first, their mean points at 45°,
    # whereas averaging raw vectors would point at atan(1/3)
    table = {"a a": torch.tensor([3.0, 0.0]), "b a": torch.tensor([0.0, 1.0]),
             "a b": torch.tensor([-1.0, 0.0]), "b b": torch.tensor([0.0, -5.0])}
    vectors = class_embeddings([["a a", "b a"], ["a b", "b b"]], lambda texts: torch.stack([table[t] for t in texts]))
    half = 1 / math.sqrt(2)
    assert torch.allclose(vectors, torch.tensor([[half, half], [-half, -half]]), atol=1e-6)


def test_topk_counts_ties_by_class_order():
    logits = torch.tensor([[0.5, 0.5, 0.1], [0.2, 0.9, 0.3], [0.1, 0.1, 0.1]])
    # row 0: true class 1 ties with class 0, which comes first -> rank 1; row 1: rank 0; row 2: true 2 -> rank 2
    result = topk_accuracy(logits, torch.tensor([1, 1, 2]), ks=(1, 2, 3, 5))
    assert result == {"top1": pytest.approx(1 / 3), "top2": pytest.approx(2 / 3), "top3": 1.0, "top5": None}


def _clustered(classes: int, per_class: int, dim: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(classes, dim, generator=generator), dim=-1)
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = centres[labels] + 0.05 * torch.randn(len(labels), dim, generator=generator)
    return centres, labels, images


def test_agreeing_model_is_perfect_and_shuffled_model_is_at_chance():
    classes, per_class = 10, 200
    centres, labels, images = _clustered(classes, per_class, 64, seed=0)
    names = [f"class {i}" for i in range(classes)]
    templates = ("a photo of {}.", "a drawing of {}.", "{}.")

    def encode_text(texts):  # each prompt lands near its class centre, a little off per template
        out = []
        for text in texts:
            index = next(i for i, n in enumerate(names) if f"{n}." in text or f"{n} " in text)
            out.append(centres[index] + 0.01 * (templates.index(text.replace(names[index], "{}")) + 1))
        return torch.stack(out)

    vectors = class_embeddings([[t.format(n) for t in templates] for n in names], encode_text)
    agree = classify(images, vectors, labels, names)
    assert agree["top1"] == 1.0 and agree["top5"] == 1.0
    assert all(row["accuracy"] == 1.0 and row["most_confused_with"] is None for row in agree["per_class"])
    assert agree["confusion"] == (torch.eye(classes, dtype=torch.long) * per_class).tolist()

    # the same images in a random order: the image side no longer carries the label
    shuffled = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(1))]
    chance = classify(shuffled, vectors, labels, names)
    sd = math.sqrt(0.1 * 0.9 / len(labels))  # binomial standard deviation of a chance accuracy
    assert abs(chance["top1"] - 1 / classes) < 5 * sd, chance["top1"]
    assert abs(chance["top5"] - 5 / classes) < 5 * math.sqrt(0.25 / len(labels)), chance["top5"]
    assert sum(row["images"] for row in chance["per_class"]) == len(labels)


def test_confusion_summary_names_the_most_confused_class():
    vectors = torch.eye(3)
    images = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    result = classify(images, vectors, torch.tensor([0, 0, 1, 2]), ["cat", "dog", "fox"])
    cat = result["per_class"][0]
    assert (cat["images"], cat["correct"], cat["accuracy"], cat["most_confused_with"], cat["confused_count"]) == \
        (2, 1, 0.5, "dog", 1)
    assert result["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert result["mean_per_class_accuracy"] == pytest.approx((0.5 + 1 + 1) / 3)


def test_shipped_prompt_sets():
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    assert all(t.count("{}") == 1 for p in PROMPT_SETS.values() for t in p.templates)
    assert {p.lang for p in PROMPT_SETS.values()} >= {"en", "de", "fr", "es"}
    with pytest.raises(ValueError, match="exactly one"):
        PromptSet("bad", "en", ("no slot",))
    with pytest.raises(ValueError, match="unknown prompt set 'nope'"):
        get_prompt_set("nope")


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


class ColourModel:
    """A model whose image and text sides are built to agree: mean colour vs the colour named."""

    preprocess = Preprocess(size=8, mean=(0, 0, 0), std=(1, 1, 1))
    image_fingerprint = "colour-model"

    def __init__(self, words: dict[str, str]):
        self.words = words  # word -> colour it means
        self.info = {"mode": "test", "step": 0}

    def image_features(self, pixels):
        return pixels.mean((2, 3)) - 0.5

    def embed_features(self, features):
        return F.normalize(features, dim=-1)

    def encode_texts(self, texts):
        out = []
        for text in texts:
            colour = next(c for word, c in self.words.items() if f" {word}." in f" {text}")
            out.append(torch.tensor(COLOURS[colour], dtype=torch.float32) / 255 - 0.5)
        return torch.stack(out)


@pytest.fixture
def colour_set(tmp_path):
    for colour, rgb in COLOURS.items():
        (tmp_path / "img" / colour).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20 + i, 20), tuple(max(0, v - 10 * i) for v in rgb)).save(tmp_path / "img" / colour / f"{i}.png")
    german = {"name": "farben-de", "lang": "de", "templates": ["ein Foto von {}."],
              "classnames": {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb"}}
    (tmp_path / "de.json").write_text(json.dumps(german))
    evalsets.register("colours", EvalSet("colours", (Split("test", ImageFolder(str(tmp_path / "img"))),),
                                         labels=LabelSpace(tuple(COLOURS)), prompts=("generic", str(tmp_path / "de.json"))))
    yield tmp_path
    evalsets.unregister("colours")


GERMAN = {"rot": "red", "grün": "green", "blau": "blue", "gelb": "yellow"}


def test_evaluate_model_on_a_registered_set_with_prompts_in_two_languages(colour_set):
    model = ColourModel({**{c: c for c in COLOURS}, **GERMAN})
    metrics = evaluate_model(model, ["colours"], cache_dir=colour_set / "cache")
    result = metrics["sets"]["colours"]
    assert result["images"] == 12 and result["labels"] == list(COLOURS)
    assert result["primary"] == "generic"
    assert result["top1_by_language"] == {"de": 1.0, "en": 1.0}
    assert metrics["headline"] == headline(metrics) == 1.0
    # a text side that reads German colour words wrongly (rot -> green, ...): German prompts fail, English do not
    crossed = dict(zip(GERMAN, ["green", "blue", "yellow", "red"]))
    wrong_de = evaluate_model(ColourModel({**{c: c for c in COLOURS}, **crossed}), ["colours"])
    assert wrong_de["sets"]["colours"]["top1_by_language"] == {"de": 0.0, "en": 1.0}
    assert wrong_de["headline"] == 1.0  # the primary prompt set (English) decides the headline
    # prompt sets chosen per evaluation replace the set's defaults
    only_de = evaluate_model(model, ["colours"], prompts={"colours": [str(colour_set / "de.json")]})
    assert list(only_de["sets"]["colours"]["by_prompt_set"]) == ["farben-de"]
    # second run reads the image features from the cache
    again = evaluate_model(model, ["colours"], cache_dir=colour_set / "cache")
    assert again["sets"]["colours"]["features_from_cache"] and not result["features_from_cache"]
