"""Tower registry: real pretrained towers load offline and behave like themselves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.image_towers import build_image_tower, names
from training.text_towers import EmptyCaptionError, TextSpec, build_text_tower, minilm_path, train_tokenizer


def test_unknown_tower_names_the_known_ones():
    with pytest.raises(ValueError, match="efficientnet-lite0"):
        build_image_tower("resnet-9000")
    with pytest.raises(ValueError, match="minilm"):
        build_text_tower(TextSpec(name="gpt-9000"))
    assert "vit-s-focus" in names()


def test_tiny_tower_is_seeded_and_fingerprint_tracks_weights():
    a, b = build_image_tower("tiny"), build_image_tower("tiny")
    assert a.fingerprint == b.fingerprint
    scratch = build_image_tower("tiny", pretrained=False, seed=3)
    assert scratch.fingerprint != a.fingerprint


def test_efficientnet_lite0_pretrained_features(demo_data):
    from PIL import Image

    tower = build_image_tower("efficientnet-lite0")
    assert tower.dim == 1280 and tower.preprocess.size == 224
    lizard = demo_data.cache / "openclipart/png/animals/az-lizard_benji_park_01.png"
    x = torch.from_numpy(tower.preprocess(Image.open(lizard))[None])
    with torch.no_grad():
        features = tower.encode(x)
        random = build_image_tower("efficientnet-lite0", pretrained=False).encode(x)
        logits = tower.module.net(x)
    assert features.shape == (1, 1280) and torch.isfinite(features).all()
    assert not torch.allclose(features, random)
    # the ImageNet weights (and our preprocessing) really work: a clipart lizard is an ImageNet lizard
    assert 38 <= int(logits.argmax()) <= 48  # ImageNet classes 38-48: banded gecko ... Komodo dragon
    # encode runs the frozen channels-last trace on CPU: the eager module's features, to float rounding
    with torch.no_grad():
        eager = tower.module(x)
    assert torch.allclose(features, eager, rtol=1e-4, atol=1e-4)


def test_frozen_cpu_encode_is_the_module_same_bytes_at_any_batch_and_never_stale():
    from training.image_towers import FrozenOnCpu, TinyConvNet

    torch.manual_seed(0)
    module = TinyConvNet().eval()
    encode = FrozenOnCpu(module)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        frozen, eager = encode(x), module(x)
        assert torch.allclose(frozen, eager, rtol=1e-5, atol=1e-5)
        assert torch.equal(frozen, encode(x))  # same bytes twice
        assert torch.equal(frozen[2:5], encode(x[2:5]))  # and whatever the batch around an image
        # an in-place change of the weights (an optimizer step) makes the next call re-freeze
        module.net[0].weight.add_(0.5)
        changed = module(x)
        assert not torch.allclose(changed, eager, atol=1e-2)
        assert torch.allclose(encode(x), changed, rtol=1e-5, atol=1e-5)
    # with gradients on (a tower being trained), encode is the module itself: gradients flow
    out = encode(x)
    assert out.requires_grad


def test_vit_s_focus_onnx_backbone_cls_token():
    tower = build_image_tower("vit-s-focus")
    assert tower.dim == 384 and not tower.trainable
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    a, b = tower.encode(x), tower.encode(x[:1])
    assert a.shape == (2, 384)
    assert torch.allclose(a[:1], b, atol=1e-4)  # batch-independent: a real per-image feature
    with pytest.raises(ValueError, match="locked"):
        build_image_tower("vit-s-focus", pretrained=False)


def test_hf_image_tower_from_local_path(tmp_path):
    import transformers

    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64, image_size=32, patch_size=8)
    torch.manual_seed(0)
    transformers.ViTModel(config).save_pretrained(tmp_path / "vit")
    tower = build_image_tower(f"hf:{tmp_path / 'vit'}")
    assert tower.dim == 32 and tower.preprocess.size == 32 and tower.trainable
    assert tower.encode(torch.zeros(3, 3, 32, 32)).shape == (3, 32)
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_image_tower(f"hf:{tmp_path}")


def test_minilm_matches_sentence_transformers_and_truncates_to_16():
    from sentence_transformers import SentenceTransformer

    tower = build_text_tower(TextSpec())
    captions = ["grinning face", "a red stop sign on a pole", "cat with wry smile"]
    ids, mask = tower.tokenize(captions)
    assert ids.shape == (3, 16)
    with torch.no_grad():
        ours = F.normalize(tower(ids, mask), dim=-1).numpy()
    reference = SentenceTransformer(str(minilm_path()), device="cpu").encode(captions, normalize_embeddings=True)
    np.testing.assert_allclose(ours, reference, atol=2e-5)
    long_ids, long_mask = tower.tokenize(["word " * 40])
    assert long_ids.shape == (1, 16) and long_mask.sum() == 16
    with pytest.raises(EmptyCaptionError):
        tower.tokenize(["ok", " \t "])


def test_scratch_tokenizer_trained_on_real_captions(demo_data, tmp_path):
    import pandas as pd

    captions = pd.read_parquet(demo_data.catalogue)["caption"].tolist()
    path = train_tokenizer(captions, 2000, tmp_path / "tokenizer.json")
    tower = build_text_tower(TextSpec(name="scratch", width=32, depth=1, heads=2), path)
    assert tower.tokenizer.get_vocab_size() <= 2000
    assert train_tokenizer(captions, 2000, tmp_path / "again.json").read_bytes() == path.read_bytes()  # deterministic
    ids, mask = tower.tokenize(["grinning face", "smiling face with open mouth"])
    assert ids.shape == (2, 16)
    # frequent corpus words are whole tokens, not [UNK] (id 1)
    tokens = [t for t in tower.tokenizer.encode("smiling face").tokens if t != "[PAD]"]
    assert tokens == ["[CLS]", "smiling", "face", "[SEP]"]
    assert "[UNK]" not in tower.tokenizer.encode(captions[0]).tokens
    assert tower(ids, mask).shape == (2, 32)


def test_pad_fit_keeps_the_whole_image_and_changes_the_fingerprint():
    from PIL import Image

    from training.image_towers import Preprocess

    wide = Image.new("RGB", (200, 100), (255, 0, 0))
    pad = Preprocess(size=32, fit="pad", fill=(0, 0, 255)).square(wide)
    # the rule: longer side 200 -> 32, so 100 -> 16 rows, centred: (32 - 16) // 2 = 8 rows of fill above
    pixels = np.asarray(pad)
    assert pad.size == (32, 32)
    assert (pixels[:8] == (0, 0, 255)).all() and (pixels[24:] == (0, 0, 255)).all()
    assert (pixels[8:24] == (255, 0, 0)).all()
    assert (np.asarray(Preprocess(size=32).square(wide)) == (255, 0, 0)).all()  # the crop sees red only
    crop, padded = build_image_tower("tiny"), build_image_tower("tiny", fit="pad")
    assert padded.fingerprint != crop.fingerprint != build_image_tower("tiny", fit="pad", fill=(0, 0, 0)).fingerprint
    assert build_image_tower("tiny", fill=(0, 0, 0)).fingerprint == crop.fingerprint  # a crop has no fill
    with pytest.raises(ValueError, match="fit must be one of crop, pad"):
        Preprocess(fit="stretch")
