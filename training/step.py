"""One optimisation step's gradient computation, shared by the trainer, the multi-node
equivalence test and the benchmark, so all three measure the same code."""

from __future__ import annotations

import torch

from training import distributed as D
from training.loss import contrastive_loss
from training.model import LiTModel


def sync_groups(model: LiTModel) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(parameters whose rank gradients add up, the temperature whose rank gradients are averaged)."""
    temperature = list(model.temperature.parameters())
    others = [p for p in model.parameters() if p.requires_grad and all(p is not t for t in temperature)]
    return others, temperature


def compute_gradients(model: LiTModel, image: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                      autocast=None) -> dict:
    """Forward, global-batch loss, backward and gradient sync; returns the loss dict."""
    with (autocast() if autocast is not None else torch.autocast("cpu", enabled=False)):
        image_features, text_features, temperature = model(image, ids, mask)
    out = contrastive_loss(image_features, text_features, temperature)
    model.zero_grad(set_to_none=True)
    out["loss"].backward()
    D.sync_gradients(*sync_groups(model))
    out["temperature"] = temperature.detach()
    return out
