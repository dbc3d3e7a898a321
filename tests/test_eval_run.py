"""End to end: real (tiny) training runs on real demo pairs, evaluated through evaluate_run."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from curation.shards import read_shard
from dedup import evalsets
from dedup.evalsets import EvalItem, EvalSet, Listing, Split
from flows.cli import main as litflow_main
from tests.demo_shards import write_demo_shards
from training.embed_cache import embed_shards, open_cache
from training.eval_model import load_run
from training.evaluate import evaluate_run, headline
from training.image_towers import build_image_tower
from training.train import TrainConfig, train
from tests.conftest import SMALL_TEXT

SHARDS, PER_SHARD = 4, 24


@pytest.fixture(scope="module")
def runs(demo_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    shards = write_demo_shards(demo_data.cache, demo_data.catalogue, root / "shards", SHARDS, PER_SHARD)
    embed_shards(build_image_tower("tiny"), shards, root / "cache")
    common = dict(shards=[str(root / "shards")], image_tower="tiny", text=SMALL_TEXT, batch_size=32, lr=3e-3,
                  warmup=5, shuffle_buffer=48, seed=0)
    train(TrainConfig(out=str(root / "lu"), mode="Lu", cache=str(root / "cache"), steps=80, checkpoint_every=80, **common))
    train(TrainConfig(out=str(root / "uu"), mode="uu", steps=4, checkpoint_every=4, **common))
    # the same real emoji the shards hold (write_demo_shards' choice), as a classification and a retrieval set
    frame = pd.read_parquet(demo_data.catalogue)
    frame = frame[frame["source"] == "emoji"].sort_values("path")
    frame = frame[frame["path"].map(lambda p: (demo_data.cache / p).stat().st_size < 300_000)].head(SHARDS * PER_SHARD)
    items = tuple(EvalItem(Path(p).name, str(demo_data.cache / p), label=c, caption=t)
                  for p, c, t in zip(frame["path"], frame["category"], frame["caption"]))
    evalsets.register("tiny-emoji", EvalSet("tiny-emoji", (Split("test", Listing(items)),),
                                            labels=evalsets.get("emoji").labels, prompts=("emoji", "generic")))
    evalsets.register("tiny-pairs", EvalSet("tiny-pairs", (Split("test", Listing(items)),), task="retrieval"))
    yield root
    evalsets.unregister("tiny-emoji")
    evalsets.unregister("tiny-pairs")


def test_evaluate_run_end_to_end(runs, tmp_path):
    metrics = evaluate_run(runs / "lu", ["tiny-emoji", "tiny-pairs"], tmp_path / "out", cache_dir=tmp_path / "cache")
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "## Zero-shot classification" in summary and "| tiny-pairs |" in summary
    model = metrics["model"]
    assert model["mode"] == "Lu" and model["step"] == 80
    assert model["checkpoint_sha256"] == hashlib.sha256((runs / "lu" / "checkpoint.pt").read_bytes()).hexdigest()
    assert model["image_tower"]["weights_fingerprint"] == build_image_tower("tiny").fingerprint
    assert model["text_tower"]["tokenizer_sha256"] == hashlib.sha256((runs / "lu" / "tokenizer.json").read_bytes()).hexdigest()
    cls, ret = metrics["sets"]["tiny-emoji"], metrics["sets"]["tiny-pairs"]
    assert cls["images"] == ret["images"] == SHARDS * PER_SHARD
    assert metrics["headline"] == headline(metrics) == cls["by_prompt_set"]["emoji"]["top1"]
    # trained 80 steps on exactly these pairs: caption -> image retrieval beats chance (10 of 96) twice over
    chance = 10 / (SHARDS * PER_SHARD)
    assert ret["all"]["text_to_image"]["R@10"] > 2 * chance, ret["all"]
    # a second evaluation reads the locked tower's features from the cache and gives the same numbers
    again = evaluate_run(runs / "lu", ["tiny-emoji", "tiny-pairs"], tmp_path / "out2", cache_dir=tmp_path / "cache")
    assert again["sets"]["tiny-pairs"]["features_from_cache"] and not ret["features_from_cache"]
    assert again["sets"]["tiny-pairs"]["all"] == ret["all"] and again["headline"] == metrics["headline"]


def test_lu_from_cache_sees_images_as_training_did(runs):
    """Training fed the head L2-normalised cached features: evaluation must embed pixels the same way."""
    model = load_run(runs / "lu")
    shard = sorted((runs / "shards").glob("*.tar"))[0]
    cache = open_cache(runs / "cache", model.tower)
    matrix, keys = cache.load(shard)
    samples = {s["__key__"]: s["jpg"] for s in read_shard(shard)}
    pixels = torch.stack([torch.from_numpy(model.preprocess.decode(samples[k])) for k in keys[:8]])
    from_pixels = model.embed_features(model.image_features(pixels))
    with torch.no_grad():
        from_cache = F.normalize(model.model.image_head(torch.from_numpy(matrix[:8].astype("float32"))), dim=-1)
    assert F.cosine_similarity(from_pixels, from_cache).min() > 0.999  # float16 cache rounding only


def test_trained_image_tower_is_the_checkpoints(runs, tmp_path):
    model = load_run(runs / "uu")
    payload = torch.load(runs / "uu" / "checkpoint.pt", weights_only=True)
    for name, tensor in model.model.image.state_dict().items():
        assert torch.equal(tensor, payload["model"][f"image.{name}"]), name
    info = model.info["image_tower"]
    assert not info["locked"] and info["trained_weights_sha256"] != info["init_fingerprint"]
    # and the CLI subcommand writes the same files
    assert litflow_main(["evaluate", str(runs / "uu"), "--out", str(tmp_path / "cli"), "--sets", "tiny-emoji",
                         "--prompts", "tiny-emoji=generic,generic-de"]) == 0
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert metrics["model"]["mode"] == "uu"
    assert list(metrics["sets"]["tiny-emoji"]["by_prompt_set"]) == ["generic", "generic-de"]
    assert set(metrics["sets"]["tiny-emoji"]["top1_by_language"]) == {"en", "de"}


def test_evaluate_on_a_folder_declared_in_a_file(runs, demo_data, tmp_path):
    """No Python: the same real emoji as ImageFolder(<category>/<file>), declared in TOML, via the CLI."""
    frame = pd.read_parquet(demo_data.catalogue)
    frame = frame[frame["source"] == "emoji"].sort_values("path")
    frame = frame[frame["path"].map(lambda p: (demo_data.cache / p).stat().st_size < 300_000)].head(SHARDS * PER_SHARD)
    folders = {}
    for path, category in zip(frame["path"], frame["category"]):
        folder = folders.setdefault(category, f"c{len(folders)}")  # folder names without spaces or '&'
        (tmp_path / "icons" / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_data.cache / path, tmp_path / "icons" / folder / Path(path).name)
    (tmp_path / "sets.toml").write_text(
        '[my-emoji]\nsource = { image_folder = "icons" }\nprompts = ["emoji", "generic"]\n'
        'splits = [{ name = "test", role = "test" }]\n')
    assert litflow_main(["evaluate", str(runs / "lu"), "--evalsets", str(tmp_path / "sets.toml"),
                         "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics["sets"]) == {"my-emoji"}  # the file's set only
    assert metrics["evalset_files"] == [str((tmp_path / "sets.toml").resolve())]
    result = metrics["sets"]["my-emoji"]
    assert result["images"] == len(frame)
    assert result["labels"] == sorted(folders.values()) and result["primary"] == "emoji"


def test_not_a_run_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint.pt"):
        evaluate_run(tmp_path, None, tmp_path / "out")
