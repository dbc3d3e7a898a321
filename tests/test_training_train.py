"""LiT training on real demo pairs: it learns, resumes bit-for-bit, and fails loudly."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from curation.shards import read_shard, write_shard
from infra.contract import empty_pair
from tests.conftest import SMALL_TEXT
from tests.demo_shards import write_demo_shards
from training.checkpoint import CheckpointMismatchError
from training.embed_cache import CacheMismatchError, embed_shards
from training.image_towers import build_image_tower
from training.metrics import read_metrics
from training.text_towers import EmptyCaptionError
from training.train import TrainConfig, TrainingDiverged, train


def _config(corpus, out, **overrides) -> TrainConfig:
    values = dict(shards=[str(corpus / "shards")], out=str(out), image_tower="tiny", cache=str(corpus / "cache"),
                  text=SMALL_TEXT, batch_size=32, steps=8, lr=2e-3, warmup=2, shuffle_buffer=48,
                  checkpoint_every=4, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


def test_lu_from_cache_learns_and_logs(embedded_demo_corpus, tmp_path):
    result = train(_config(embedded_demo_corpus, tmp_path, steps=80, checkpoint_every=40, lr=3e-3, warmup=5))
    rows = read_metrics(result["metrics"])
    assert [r["step"] for r in rows] == list(range(1, 81))
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-5:]) / 5
    assert first > math.log(32) - 0.5  # starts near chance for a batch of 32
    assert last < first - 1.0, (first, last)  # the text tower learned to find its images
    assert rows[0]["temperature"] == pytest.approx(10.0, rel=1e-3)  # initialised at 10
    assert rows[-1]["temperature"] != rows[0]["temperature"]  # ... and learned
    with Image.open(tmp_path / "metrics.png") as png:
        assert png.format == "PNG" and png.size[0] > 400
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert payload["step"] == 80 and not any(k.startswith("image.") for k in payload["model"])


def test_resume_is_bit_identical(embedded_demo_corpus, tmp_path):
    straight = train(_config(embedded_demo_corpus, tmp_path / "a"))
    train(_config(embedded_demo_corpus, tmp_path / "b", stop_after=3))  # a session that ends early (checkpoint at 3)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 3
    resumed = train(_config(embedded_demo_corpus, tmp_path / "b"))
    assert resumed["start_step"] == 3 and resumed["step"] == straight["step"] == 8
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["scheduler"] == b["scheduler"]
    assert [r["loss"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl")] == \
        [r["loss"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")]
    with pytest.raises(CheckpointMismatchError, match=r"checkpoint\.pt: checkpoint from another config \(lr"):
        train(_config(embedded_demo_corpus, tmp_path / "b", lr=1e-2))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(embedded_demo_corpus, tmp_path):
    # a learning rate of 1e30 (and no effective clipping) makes the weights overflow at step 2
    with pytest.raises(TrainingDiverged, match=r"at step 2.*checkpoint\.pt \(step 1\)"):
        train(_config(embedded_demo_corpus, tmp_path, lr=1e30, clip=1e30, warmup=1, checkpoint_every=1))
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert payload["step"] == 1
    assert all(torch.isfinite(v).all() for v in payload["model"].values() if v.is_floating_point())


def test_image_modes_lock_or_train_the_tower(embedded_demo_corpus, tmp_path):
    pretrained = build_image_tower("tiny").module.state_dict()
    states = {}
    for mode, source in (("Lu", "images"), ("Uu", "images"), ("uu", "images")):
        train(_config(embedded_demo_corpus, tmp_path / mode, mode=mode, image_source=source, cache=None, steps=3, batch_size=16))
        states[mode] = torch.load(tmp_path / mode / "checkpoint.pt", weights_only=True)["model"]
    assert not any(k.startswith("image.") for k in states["Lu"])  # locked: not even saved
    for mode in ("Uu", "uu"):
        trained = {k[len("image."):]: v for k, v in states[mode].items() if k.startswith("image.")}
        assert trained.keys() == pretrained.keys()
        assert not torch.equal(trained["net.0.weight"], pretrained["net.0.weight"])
    # Uu moved a little from the pretrained start; uu started elsewhere entirely
    uu_gap = (states["uu"]["image.net.0.weight"] - pretrained["net.0.weight"]).abs().mean()
    uU_gap = (states["Uu"]["image.net.0.weight"] - pretrained["net.0.weight"]).abs().mean()
    assert uu_gap > 5 * uU_gap


def test_ll_locks_the_pretrained_text_tower_and_trains_only_heads(embedded_demo_corpus, tmp_path):
    """Mode LL (the frozen-text baseline): MiniLM keeps its pretrained weights and runs without
    dropout; the text head and the temperature learn."""
    from training.train import build_model

    config = _config(embedded_demo_corpus, tmp_path / "run", mode="LL", text={"name": "minilm"}, steps=3,
                     batch_size=8, shuffle_buffer=8)
    assert config.text.name == "minilm" and config.text_locked
    train(config)
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    initial, *_ = build_model(config, None, torch.device("cpu"))
    start = initial.state_dict()
    text = [k for k in start if k.startswith("text.")]
    assert text and all(torch.equal(trained[k], start[k]) for k in text)
    assert not torch.equal(trained["text_head.weight"], start["text_head.weight"])
    assert not torch.equal(trained["temperature.log_t"], start["temperature.log_t"])
    initial.train()
    assert not initial.text.training and initial.text_head.training  # locked: no dropout while training
    ids, mask = initial.text.tokenize(["a red square", "a blue circle"])
    assert torch.equal(initial.encode_text(ids, mask), initial.encode_text(ids, mask))


def test_default_towers_efficientnet_cache_and_minilm(embedded_demo_corpus, demo_data, tmp_path):
    shards = write_demo_shards(demo_data.cache, demo_data.catalogue, tmp_path / "shards", 1, 16, source="openclipart")
    embed_shards(build_image_tower("efficientnet-lite0"), shards, tmp_path / "cache", batch_size=16)
    config = TrainConfig(shards=[str(tmp_path / "shards")], out=str(tmp_path / "run"), cache=str(tmp_path / "cache"),
                         batch_size=8, steps=3, warmup=1, shuffle_buffer=8)
    assert config.image_tower == "efficientnet-lite0" and config.text.name == "minilm" and config.text.max_tokens == 16
    assert config.weight_decay == 0.0  # LiT: no weight decay with a locked image tower (LU)
    rows = read_metrics(train(config)["metrics"])
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) for r in rows)
    # the same cache with another tower is refused, naming what it found
    with pytest.raises(CacheMismatchError, match="efficientnet-lite0"):
        train(TrainConfig(shards=[str(tmp_path / "shards")], out=str(tmp_path / "run2"), image_tower="tiny",
                          cache=str(tmp_path / "cache"), batch_size=8, steps=1))


def test_bad_input_names_the_file(embedded_demo_corpus, tmp_path):
    samples = list(read_shard(embedded_demo_corpus / "shards" / "00000.tar"))
    pairs = [(json.loads(s["json"]), s["jpg"]) for s in samples]
    pairs[5] = (pairs[5][0] | {"caption": "  \t "}, pairs[5][1])
    shard = write_shard(tmp_path / "blank", "00000", pairs)
    with pytest.raises(EmptyCaptionError, match=rf"{shard}: caption of sample '{pairs[5][0]['key']}'"):
        train(_config(embedded_demo_corpus, tmp_path / "run", shards=[str(shard)], mode="Uu", cache=None, batch_size=24, steps=1,
                      shuffle_buffer=1))
    empty = write_shard(tmp_path / "empty", "00007", [])
    with pytest.raises(ValueError, match=r"00007\.tar: empty shard"):
        train(_config(embedded_demo_corpus, tmp_path / "run2", shards=[str(embedded_demo_corpus / "shards"), str(empty)]))
    record = empty_pair(key="k", caption="x", status="kept")
    missing_manifest = write_shard(tmp_path / "nomanifest", "00008", [(record, pairs[0][1])])
    missing_manifest.with_suffix(".parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"00008\.parquet: manifest"):
        train(_config(embedded_demo_corpus, tmp_path / "run3", shards=[str(missing_manifest)]))
