"""Micro-batches (GradCache) leave the global-batch loss and its gradients unchanged; time-based
checkpoints; ``uu`` means a scratch text tower."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.conftest import SMALL_TEXT
from training.config import TextSpec, TrainConfig
from training.image_towers import TinyConvNet
from training.model import LiTModel
from training.step import compute_gradients
from training.text_towers import build_text_tower
from training.train import train

CAPTIONS = [f"a drawing of {w} number {i}" for i, w in enumerate(
    "cat dog bird house tree car boat lamp chair key book cup fish star moon sun".split())]


class ConvBN(nn.Module):
    """A real conv net with batch norm: its running statistics must be updated once per slice."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.GELU(), nn.Conv2d(8, 32, 3))

    def forward(self, x):
        return self.net(x).mean((2, 3))


def _model(image_module: nn.Module) -> LiTModel:
    torch.manual_seed(0)
    text = build_text_tower(TextSpec(name="minilm"))  # real MiniLM: dropout 0.1 in training mode
    return LiTModel(text, 32 if isinstance(image_module, ConvBN) else 64, image_module, image_locked=False)


def _batch(model: LiTModel):
    image = torch.randn(len(CAPTIONS), 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ids, mask = model.text.tokenize(CAPTIONS)
    return image, ids, mask


def _grads(model: LiTModel) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(a: dict, b: dict, atol=1e-6):
    assert a.keys() == b.keys() and len(a) > 100  # every MiniLM, head, tower and temperature parameter
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=atol), (name, (a[name] - b[name]).abs().max())


def test_micro_batches_give_the_full_batch_gradients():
    model = _model(TinyConvNet())
    model.train()
    model.text.eval()  # dropout off: one pass over 16 and slices of 5 compute the same function
    image, ids, mask = _batch(model)
    full = compute_gradients(model, image, ids, mask)
    full_grads = _grads(model)
    sliced = compute_gradients(model, image, ids, mask, micro_batch=5)
    assert sliced["global_batch"] == full["global_batch"] == 16  # the loss is over the whole batch, not a slice
    assert torch.allclose(sliced["loss"], full["loss"], atol=1e-6)
    _assert_same(_grads(model), full_grads)
    assert full_grads["temperature.log_t"].abs() > 0


def test_micro_batches_replay_dropout_and_update_batch_norm_once():
    """Reference: the same slices, forward with gradients all at once (memory ∝ batch)."""
    model = _model(ConvBN())
    model.train()  # dropout on in MiniLM, batch norm on batch statistics
    image, ids, mask = _batch(model)
    reference = copy.deepcopy(model)
    torch.manual_seed(7)
    parts = [slice(0, 6), slice(6, 12), slice(12, 16)]
    outs = [reference(image[p], ids[p], mask[p]) for p in parts]
    from training.loss import contrastive_loss

    loss = contrastive_loss(torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs]), outs[0][2])
    loss["loss"].backward()
    torch.manual_seed(7)
    sliced = compute_gradients(model, image, ids, mask, micro_batch=6)
    assert torch.allclose(sliced["loss"], loss["loss"], atol=1e-6)
    _assert_same(_grads(model), _grads(reference))
    for (name, buffer), (_, expected) in zip(model.named_buffers(), reference.named_buffers()):
        assert torch.equal(buffer, expected), name  # running stats moved once per slice, not twice
    assert int(dict(model.named_buffers())["image.net.1.num_batches_tracked"]) == 3


@pytest.mark.parametrize("mode", ["LU", "Lu", "LL", "UU", "Uu", "UL", "uU", "uu", "uL"])
def test_the_second_letter_decides_the_text_tower(tmp_path, mode):
    """LiT's letters: u = from scratch, U = from pretrained weights, L = pretrained and locked."""
    base = dict(shards=["x"], out=str(tmp_path), cache="c")
    config = TrainConfig(mode=mode, **base)
    assert config.text.name == ("scratch" if mode[1] == "u" else "minilm")
    assert (config.image_locked, config.image_pretrained, config.text_locked) == \
        (mode[0] == "L", mode[0] != "u", mode[1] == "L")
    assert config.image_source == ("cache" if mode[0] == "L" else "images")
    if mode[1] == "u":  # a pretrained tower named with a scratch letter is refused, naming the right mode
        with pytest.raises(ValueError, match=rf"mode {mode} trains the text tower from scratch.*'minilm'.*"
                                             rf"mode {mode[0]}U to fine-tune it"):
            TrainConfig(mode=mode, text={"name": "minilm"}, **base)
    else:  # and a scratch tower named with a pretrained letter
        with pytest.raises(ValueError, match=rf"mode {mode} starts the text tower from pretrained weights.*"
                                             rf"mode {mode[0]}u trains a scratch text tower"):
            TrainConfig(mode=mode, text={"name": "scratch"}, **base)


def test_no_mode_follows_the_text_tower_and_old_runs_load_as_they_were(tmp_path):
    base = dict(shards=["x"], out=str(tmp_path), cache="c")
    assert TrainConfig(**base).mode == "LU"
    assert TrainConfig(text={"name": "scratch"}, **base).mode == "Lu"
    # a run trained when "Lu" meant a fine-tuned MiniLM: its checkpoint says Lu + minilm
    old = dict(base, mode="Lu", text={"name": "minilm"})
    assert TrainConfig.model_validate(old, context={"trained_run": True}).mode == "LU"
    assert TrainConfig.model_validate(dict(old, mode="Uu"), context={"trained_run": True}).mode == "UU"


def _time_config(corpus, out, minutes):
    return TrainConfig(shards=[str(corpus / "shards")], out=str(out), image_tower="tiny", cache=str(corpus / "cache"),
                       text=SMALL_TEXT, batch_size=16, steps=4, warmup=1, shuffle_buffer=16,
                       checkpoint_every=1000, checkpoint_minutes=minutes)


@pytest.mark.parametrize("minutes", [1e-9, None])
def test_checkpoints_by_time_as_well_as_by_steps(embedded_demo_corpus, tmp_path, minutes):
    seen = {}

    def on_step(step, _row):  # before this step's checkpoint: what the previous steps left on disk
        ckpt = tmp_path / "checkpoint.pt"
        seen[step] = torch.load(ckpt, weights_only=True)["step"] if ckpt.exists() else None

    train(_time_config(embedded_demo_corpus, tmp_path, minutes), on_step=on_step)
    if minutes is None:  # by steps only: nothing before the last step
        assert seen == {1: None, 2: None, 3: None, 4: None}
    else:  # every step is past the time limit: each saves
        assert seen == {1: None, 2: 1, 3: 2, 4: 3}
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 4


def test_training_with_micro_batches_runs_and_is_its_own_run(embedded_demo_corpus, tmp_path):
    config = dict(shards=[str(embedded_demo_corpus / "shards")], image_tower="tiny", mode="Uu", text=SMALL_TEXT,
                  batch_size=16, steps=2, warmup=1, shuffle_buffer=16)
    sliced = train(TrainConfig(out=str(tmp_path / "a"), micro_batch=4, **config))
    whole = train(TrainConfig(out=str(tmp_path / "b"), **config))
    assert sliced["step"] == whole["step"] == 2
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    assert a["identity"]["micro_batch"] == 4  # batch norm sees slices: not the same run as the whole batch
    assert "micro_batch" not in torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["identity"]


def test_image_fit_is_recorded_with_the_tower_and_a_mismatched_cache_refused(embedded_demo_corpus, tmp_path):
    from training.embed_cache import CacheMismatchError, embed_shards
    from training.eval_model import load_run
    from training.image_towers import build_image_tower
    from training.shard_inputs import resolve_shards

    config = dict(shards=[str(embedded_demo_corpus / "shards")], image_tower="tiny", text=SMALL_TEXT, batch_size=16,
                  steps=1, warmup=1, shuffle_buffer=16)
    with pytest.raises(CacheMismatchError, match="no embedding cache for tower 'tiny'"):  # the cache was cropped
        train(TrainConfig(out=str(tmp_path / "a"), cache=str(embedded_demo_corpus / "cache"), image_fit="pad",
                          **config))
    padded = build_image_tower("tiny", fit="pad", fill=(0, 0, 0))
    embed_shards(padded, resolve_shards(config["shards"]), tmp_path / "cache")
    train(TrainConfig(out=str(tmp_path / "b"), cache=str(tmp_path / "cache"), image_fit="pad", image_fill="#000000",
                      **config))
    model = load_run(tmp_path / "b")  # evaluation preprocesses as the cache did
    assert model.preprocess == padded.preprocess
    assert model.info["image_tower"]["weights_fingerprint"] == padded.fingerprint
