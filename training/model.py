"""The two-tower model: image side (cached features, a locked tower, or a trained one), text
tower, optional linear heads to a shared size, and the learned temperature.

Locking is declared, not coded around: a locked image tower (``L?``) is either absent (features
come from the cache) or frozen and run under ``no_grad``; a locked text tower (``?L``) is frozen,
kept in eval mode (no dropout) and run under ``no_grad``. Only parameters that require a gradient
reach the optimiser, and the same list drives gradient sync, so they cannot drift. A locked
text tower stays in the checkpoint (its weights are a package's or a path's, which can change).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from training.config import TEMPERATURE_INIT
from training.loss import LogTemperature
from training.text_towers import TextTower


def compile_patterns(patterns: list[str], what: str) -> list[re.Pattern]:
    """Regular expressions over parameter names (``freeze``, ``lr_mults``), matched in full by
    their users; one that does not compile is an error naming the option."""
    rules = []
    for pattern in patterns:
        try:
            rules.append(re.compile(pattern))
        except re.error as err:
            raise ValueError(f"{what} pattern '{pattern}' is not a regular expression ({err})") from None
    return rules


class LiTModel(nn.Module):
    def __init__(self, text: TextTower, image_dim: int, image_tower: nn.Module | None = None,
                 image_locked: bool = True, embed_dim: int | None = None, image_head: bool = False,
                 text_head: bool = True, text_locked: bool = False, temperature_init: float = TEMPERATURE_INIT):
        super().__init__()
        out_dim = embed_dim or image_dim
        self.text = text
        self.image = image_tower
        self.image_locked = image_locked
        self.text_locked = text_locked
        for tower in self._locked_towers():
            tower.requires_grad_(False)
            tower.eval()
        self.image_head = nn.Linear(image_dim, out_dim) if image_head or out_dim != image_dim else nn.Identity()
        self.text_head = nn.Linear(text.dim, out_dim) if text_head or out_dim != text.dim else nn.Identity()
        self.temperature = LogTemperature(temperature_init)

    def _locked_towers(self) -> list[nn.Module]:
        return [tower for tower, locked in ((self.image, self.image_locked), (self.text, self.text_locked))
                if tower is not None and locked]

    def train(self, mode: bool = True):
        super().train(mode)
        for tower in self._locked_towers():
            tower.eval()  # a locked tower keeps its batch-norm statistics and runs without dropout
        return self

    @staticmethod
    def _features(tower: nn.Module, locked: bool, *inputs: torch.Tensor) -> torch.Tensor:
        """A tower's output; a locked tower runs without building a graph."""
        if not locked:
            return tower(*inputs)
        with torch.no_grad():
            return tower(*inputs).float()

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        if self.image is None:
            return self.image_head(image)
        return self.image_head(self._features(self.image, self.image_locked, image))

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.text_head(self._features(self.text, self.text_locked, ids, mask))

    def forward(self, image: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
        return self.encode_image(image), self.encode_text(ids, mask), self.temperature()

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: every parameter and buffer outside a locked image tower."""
        skip = "image." if self.image is not None and self.image_locked else None
        return {k: v for k, v in self.state_dict().items() if skip is None or not k.startswith(skip)}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.trainable_state())
        unexpected, missing = set(state) - expected, expected - set(state)
        if unexpected or missing:
            raise ValueError(f"checkpoint does not fit this model: unexpected {sorted(unexpected)[:5]}, "
                             f"missing {sorted(missing)[:5]}")
        self.load_state_dict(state, strict=False)

    def param_groups(self, weight_decay: float, lr: float, lr_mults: list | tuple = (),
                     fallback: list | tuple = ()) -> list[dict]:
        """AdamW groups: decay on matrices only (not biases, norms, embeddings' scale, temperature);
        each split by learning-rate multiplier, ``lr_mults`` being (pattern, multiplier) pairs over
        full parameter names, first match wins, as big_vision's ``config.lr_mults``. The first
        group is always the base-rate decay group (what the metrics log reports as ``lr``).
        A pattern that matches no trainable parameter is an error. ``fallback`` rules (the config's
        ``text_lr_mult``) apply where no ``lr_mults`` rule matched, and may match nothing."""
        every = list(lr_mults) + list(fallback)
        rules = list(zip(compile_patterns([p for p, _ in every], "lr_mults"), (float(m) for _, m in every)))
        used = set()
        groups: dict[tuple[str, float], list] = {("decay", 1.0): []}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            mult = 1.0
            for i, (rule, factor) in enumerate(rules):
                if rule.fullmatch(name):
                    mult = factor
                    used.add(i)
                    break
            kind = "temperature" if name.startswith("temperature.") else "decay" if param.ndim >= 2 else "no_decay"
            groups.setdefault((kind, mult), []).append(param)
        unused = [lr_mults[i][0] for i in range(len(lr_mults)) if i not in used]
        if unused:
            raise ValueError(f"lr_mults pattern(s) {unused} match no trainable parameter")
        order = {"decay": 0, "no_decay": 1, "temperature": 2}
        return [{"params": params, "weight_decay": weight_decay if kind == "decay" else 0.0, "lr": lr * mult,
                 "name": kind if mult == 1.0 else f"{kind} x{mult:g}"}
                for (kind, mult), params in sorted(groups.items(), key=lambda kv: (kv[0][1] != 1.0, kv[0][1],
                                                                                    order[kv[0][0]]))]
