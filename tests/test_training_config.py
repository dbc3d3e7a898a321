"""The training config: one validated model from a run file, flags and --set; written whole to the
run folder and good for repeating the run; freeze patterns; the torchrun path keeps every field."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from flows.cli import main as litflow
from training.config import TextSpec, TrainConfig, load_train_config
from training.train import build_model, train

RUN_FILE = """
image_tower = "tiny"
batch_size = 16
steps = 3
lr = 2e-3
warmup = 1
shuffle_buffer = 16
checkpoint_every = 3
[text]
name = "scratch"
width = 48
depth = 1
heads = 2
vocab_size = 600
"""


def _run_file(tmp_path: Path, corpus: Path, extra: str = "") -> Path:
    path = tmp_path / "run.toml"
    path.write_text(f'shards = ["{corpus / "shards"}"]\ncache = "{corpus / "cache"}"\n' + extra + RUN_FILE)
    return path


def test_file_then_flags_then_set(tmp_path, embedded_demo_corpus):
    path = _run_file(tmp_path, embedded_demo_corpus)
    config = load_train_config(path, {"steps": 7, "out": "o"}, ["lr=0.5", "text.width=32", "exclude=a.parquet"])
    assert (config.steps, config.lr, config.out, config.exclude) == (7, 0.5, "o", ["a.parquet"])
    assert config.text == TextSpec(name="scratch", width=32, depth=1, heads=2, vocab_size=600)
    assert config.image_tower == "tiny" and config.batch_size == 16  # from the file
    assert config.weight_decay == 0.0  # resolved: Lu's default


@pytest.mark.parametrize("extra, overrides, message", [
    ("lrr = 3e-4\n", [], r"lrr: Extra inputs are not permitted"),
    ("", ["lrr=3e-4"], r"--set lrr: no such training option \(you probably got a typo\)"),
    ("", ["text.widht=3"], r"--set text.widht: the text tower has no option 'widht'"),
    ('mode = "LX"\n', [], r"mode: Input should be 'LU', 'Lu', 'LL', 'UU', 'Uu', 'UL', 'uU', 'uu' or 'uL'"),
    ("", ["batch_size=0"], r"batch_size: Input should be greater than 0"),
    ("", ["lr"], r"expected KEY=VALUE"),
])
def test_an_unknown_or_bad_option_is_named(tmp_path, embedded_demo_corpus, extra, overrides, message):
    path = _run_file(tmp_path, embedded_demo_corpus, extra)
    with pytest.raises(ValueError, match=message) as err:
        load_train_config(path, {"out": str(tmp_path / "o")}, overrides)
    if extra:
        assert str(path) in str(err.value)


def test_the_run_folder_holds_the_whole_config_and_it_repeats_the_run(tmp_path, embedded_demo_corpus):
    path = _run_file(tmp_path, embedded_demo_corpus)
    first = tmp_path / "first"
    assert litflow(["train", "--config", str(path), "--out", str(first), "--device", "cpu"]) == 0
    written = json.loads((first / "config.json").read_text())
    assert written == load_train_config(path, {"out": str(first), "device": "cpu"}).model_dump(mode="json")
    assert set(written) == set(TrainConfig.model_fields)  # whole: every field, defaults included
    # the written config, given back with another folder, trains the same weights
    again = tmp_path / "again"
    assert litflow(["train", "--config", str(first / "config.json"), "--set", f"out={json.dumps(str(again))}"]) == 0
    a = torch.load(first / "checkpoint.pt", weights_only=True)
    b = torch.load(again / "checkpoint.pt", weights_only=True)
    assert a["identity"] == b["identity"]
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_freeze_patterns_keep_the_matching_weights(tmp_path, embedded_demo_corpus):
    path = _run_file(tmp_path, embedded_demo_corpus, "freeze = ['text\\..*']\n")
    config = load_train_config(path, {"out": str(tmp_path / "run"), "device": "cpu"})
    train(config)
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert trained["identity"]["freeze"] == ["text\\..*"]
    # the same config built afresh (same seed, same tokenizer) is the initial state
    initial, *_ = build_model(config, tmp_path / "run" / "tokenizer.json", torch.device("cpu"))
    start = initial.state_dict()
    frozen = [k for k in start if k.startswith("text.")]
    assert frozen and all(torch.equal(trained["model"][k], start[k]) for k in frozen)
    assert not torch.equal(trained["model"]["text_head.weight"], start["text_head.weight"])  # the head learned
    assert not any(p.requires_grad for n, p in initial.named_parameters() if n.startswith("text."))


def test_a_freeze_pattern_that_matches_nothing_is_an_error(tmp_path, embedded_demo_corpus):
    path = _run_file(tmp_path, embedded_demo_corpus, "freeze = ['txt\\..*']\n")
    config = load_train_config(path, {"out": str(tmp_path / "run"), "device": "cpu"})
    with pytest.raises(ValueError, match=r"freeze pattern 'txt\\\.\.\*' matches no parameter; parameters look like: .*text_head"):
        train(config)


@pytest.mark.slow
def test_the_torchrun_path_keeps_every_text_field(tmp_path, embedded_demo_corpus):
    """retrain-lit's multi-process launch trains exactly the config it was given (it used to keep only text.name)."""
    from flows.retrain import _torchrun

    text = {"name": "scratch", "max_tokens": 12, "width": 48, "depth": 1, "heads": 2, "vocab_size": 600}
    fields = {"shards": [str(embedded_demo_corpus / "shards")], "out": str(tmp_path / "run"), "mode": "Lu",
              "image_tower": "tiny", "cache": str(embedded_demo_corpus / "cache"), "text": text, "batch_size": 16,
              "steps": 2, "lr": 2e-3, "warmup": 1, "shuffle_buffer": 8, "checkpoint_every": 2, "device": "cpu"}
    _torchrun(fields, {"nnodes": 1, "nproc": 2, "rdzv_endpoint": "127.0.0.1:0", "job_id": "config-test"})
    identity = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["identity"]
    assert identity["text"] == text and identity["world"] == 2
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    assert {k: written[k] for k in fields} == fields


def test_help_lists_every_option_of_the_model(capsys):
    with pytest.raises(SystemExit):
        litflow(["train", "--help"])
    text = capsys.readouterr().out
    for name in TrainConfig.model_fields:
        if name not in ("shards", "text", "lr_mults"):  # lr_mults (pairs): --set or a run file
            assert f"--{name.replace('_', '-')}" in text, name
    for name in TextSpec.model_fields:
        assert f"--text-{name.replace('_', '-')}" in text, name
    assert sys.modules.get("training.config") is not None


def test_lr_mults_give_matching_parameters_their_own_rate(tmp_path, embedded_demo_corpus):
    path = _run_file(tmp_path, embedded_demo_corpus, "lr_mults = [['text\\.encoder\\..*', 0.1]]\n")
    config = load_train_config(path, {"out": str(tmp_path / "run"), "device": "cpu"})
    train(config)
    payload = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert payload["identity"]["lr_mults"] == [["text\\.encoder\\..*", 0.1]]
    groups = payload["optimizer"]["param_groups"]
    assert groups[0]["initial_lr"] == config.lr  # the base decay group first: what the metrics log shows
    assert sorted({round(g["initial_lr"] / config.lr, 6) for g in groups}) == [0.1, 1.0]
    model, *_ = build_model(config, tmp_path / "run" / "tokenizer.json", torch.device("cpu"))
    by_rate = {}
    for group in model.param_groups(0.0, config.lr, config.lr_mults):
        by_rate.setdefault(group["lr"], 0)
        by_rate[group["lr"]] += len(group["params"])
    n_encoder = sum(1 for n, p in model.named_parameters() if n.startswith("text.encoder."))
    assert by_rate[config.lr * 0.1] == n_encoder > 0
    with pytest.raises(ValueError, match=r"lr_mults pattern\(s\) \['nope'\] match no trainable parameter"):
        model.param_groups(0.0, config.lr, [("nope", 2.0)])
    # text_lr_mult's rule comes after: explicit rules win where they match, it takes the rest of the
    # text tower, and it may match nothing (it is not the user's pattern)
    rates = {}
    for group in model.param_groups(0.0, 1.0, config.lr_mults, [("text\\..*", 0.05), ("nothing", 3.0)]):
        for param in group["params"]:
            rates[id(param)] = group["lr"]
    for name, param in model.named_parameters():
        expected = 0.1 if name.startswith("text.encoder.") else 0.05 if name.startswith("text.") else 1.0
        assert rates[id(param)] == expected, name


def test_text_lr_mult_applies_to_a_pretrained_text_tower_being_fine_tuned(tmp_path):
    base = dict(shards=["x"], out=str(tmp_path), cache="c", text_lr_mult=0.05)
    for mode in ("LU", "UU", "uU"):
        config = TrainConfig(mode=mode, **base)
        assert config.text_lr_rules == [("text\\..*", 0.05)]
        assert config.identity(1, None)["text_lr_mult"] == 0.05
    for mode in ("Lu", "LL", "uu"):  # a scratch tower learns at lr; a locked one not at all
        config = TrainConfig(mode=mode, **base)
        assert config.text_lr_rules == [] and "text_lr_mult" not in config.identity(1, None)
    assert TrainConfig(mode="LU", **dict(base, text_lr_mult=1.0)).text_lr_rules == []


def test_temperature_init_starts_the_learned_temperature_and_names_the_run(tmp_path):
    from training.model import LiTModel
    from training.text_towers import build_text_tower, train_tokenizer

    base = dict(shards=["x"], out=str(tmp_path), cache="c")
    default = TrainConfig(**base)
    assert default.temperature_init == 10.0 and "temperature_init" not in default.identity(1, None)
    warm = TrainConfig(temperature_init=30.0, **base)
    assert warm.identity(1, None)["temperature_init"] == 30.0
    assert {k: v for k, v in warm.identity(1, None).items() if k != "temperature_init"} == default.identity(1, None)
    with pytest.raises(ValueError, match="temperature_init"):
        TrainConfig(temperature_init=0.0, **base)
    tokenizer = train_tokenizer(["a red apple", "a blue car"] * 5, 100, tmp_path / "tokenizer.json")
    text = build_text_tower(TextSpec(name="scratch", width=16, depth=1, heads=2), tokenizer)
    for init in (10.0, 30.0):
        model = LiTModel(text, 8, temperature_init=init)
        assert torch.isclose(model.temperature(), torch.tensor(init)), init
