"""A trained LiT model loaded from its run folder, for evaluation: images and texts → unit vectors.

The run folder holds ``checkpoint.pt`` (trainable weights + the run's identity: mode, towers,
heads, text spec, seed) and, for scratch text towers, ``tokenizer.json`` (its sha256 is in the
identity and is checked). A locked image tower (modes ``L?``) is not in the checkpoint: it is
rebuilt by name from its pretrained weights, and its fingerprint is recorded. A run trained
from the embedding cache saw L2-normalised tower features, so those are normalised here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from infra.files import file_sha256
from training.config import TrainConfig
from training.image_towers import ImageTower, Preprocess, _hash_state
from training.model import LiTModel
from training.train import build_model


@dataclass
class EvalModel:
    """Wraps a :class:`LiTModel` (eval mode) with the image side it was trained with."""

    model: LiTModel
    tower: ImageTower
    normalise_features: bool  # a locked image tower trained from the cache: the head saw unit-length features
    info: dict = field(default_factory=dict)
    text_batch: int = 256
    image_batch: int = 64

    @property
    def preprocess(self) -> Preprocess:
        return self.tower.preprocess

    @property
    def image_fingerprint(self) -> str:
        """sha256 of the image tower as used: the pretrained fingerprint (locked) or the trained weights."""
        return self.info["image_tower"]["weights_fingerprint"]

    @torch.inference_mode()
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed pixels → tower features (before the head)."""
        features = []
        for start in range(0, pixels.shape[0], self.image_batch):
            batch = pixels[start:start + self.image_batch]
            out = self.model.image(batch) if self.model.image is not None else self.tower.encode(batch)
            features.append(out.float())
        return torch.cat(features) if features else torch.empty(0, self.tower.dim)

    @torch.inference_mode()
    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """Tower features → unit image embeddings (normalise as in training, head, normalise)."""
        if self.normalise_features:
            features = F.normalize(features.float(), dim=-1)
        return F.normalize(self.model.image_head(features.float()).float(), dim=-1)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), self.text_batch):
            ids, mask = self.model.text.tokenize(texts[start:start + self.text_batch])
            out.append(self.model.encode_text(ids, mask).float())
        return F.normalize(torch.cat(out), dim=-1)


def _state_fingerprint(module: torch.nn.Module) -> str:
    return _hash_state(module).hexdigest()


def load_run(run_dir: str | Path) -> EvalModel:
    """Rebuild the model of a training run folder from its checkpoint (and tokenizer)."""
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.exists():
        raise FileNotFoundError(f"{run_dir}: no checkpoint.pt (not a finished training run folder?)")
    try:
        payload = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{ckpt}: not a readable litflow checkpoint ({err})") from err
    identity = payload.get("identity") if isinstance(payload, dict) else None
    if not identity or "mode" not in identity:
        raise ValueError(f"{ckpt}: not a litflow checkpoint (no run identity)")
    config = TrainConfig.for_evaluation(identity, run_dir)  # the run's model, reading pixels
    text_spec = config.text
    tokenizer = None
    if text_spec.name == "scratch":
        tokenizer = run_dir / "tokenizer.json"
        if not tokenizer.exists():
            raise FileNotFoundError(f"{tokenizer}: the run's scratch tokenizer is missing")
        if identity.get("tokenizer_sha256") and file_sha256(tokenizer) != identity["tokenizer_sha256"]:
            raise ValueError(f"{tokenizer}: not the tokenizer this checkpoint was trained with (sha256 differs)")
    mode, locked = config.mode, config.image_locked  # the mode as resolved (runs from before the letters)
    try:
        model, tower, _, _ = build_model(config, tokenizer, torch.device("cpu"))
    except ValueError as err:
        raise ValueError(f"{ckpt}: {err}") from None
    model.load_trainable_state(payload["model"])
    model.eval()
    trained_image = None if locked else _state_fingerprint(model.image)
    info = {
        "run_dir": str(run_dir.resolve()), "checkpoint": str(ckpt.resolve()), "checkpoint_sha256": file_sha256(ckpt),
        "step": int(payload.get("step", 0)), "mode": mode, "identity": identity,
        "image_tower": {"name": tower.name, "pretrained_fingerprint": tower.fingerprint if config.image_pretrained else None,
                        "init_fingerprint": tower.fingerprint, "locked": locked,
                        "trained_weights_sha256": trained_image,
                        "weights_fingerprint": tower.fingerprint if locked else trained_image,
                        "preprocess": tower.preprocess.describe(),
                        "features_normalised": locked and identity.get("image_source") == "cache"},
        "text_tower": {"name": text_spec.name, "spec": identity["text"], "frozen": list(config.freeze),
                       "weights_sha256": _state_fingerprint(model.text),
                       "tokenizer_sha256": identity.get("tokenizer_sha256")},
        "temperature": float(model.temperature().detach()),
    }
    return EvalModel(model, tower, normalise_features=info["image_tower"]["features_normalised"], info=info)
