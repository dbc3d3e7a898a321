"""Symmetric InfoNCE over the global batch, with a temperature learned in log space.

Each rank all-gathers the (normalised) features of every rank *without* gradient and puts
its own, gradient-carrying, features back in its slot. Every rank then computes the same
global loss; a parameter's true gradient is the SUM over ranks of what each rank computed
through its local part (see :func:`training.distributed.sync_gradients`). The temperature
is the exception: each rank already sees its full gradient, so it is averaged instead.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from training.config import TEMPERATURE_INIT


class LogTemperature(nn.Module):
    """A scalar ``log t``; logits are ``t * cos``."""

    def __init__(self, init: float = TEMPERATURE_INIT):
        super().__init__()
        self.log_t = nn.Parameter(torch.tensor(math.log(init)))

    def forward(self) -> torch.Tensor:
        return self.log_t.exp()


def gather_with_local_grad(local: torch.Tensor) -> torch.Tensor:
    """(B_local, D) on each rank -> (B_global, D) in rank order; only the local rows carry grad."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local.detach().contiguous())
    parts[dist.get_rank()] = local
    return torch.cat(parts, 0)


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, temperature: torch.Tensor) -> dict:
    """Mean of image->text and text->image cross-entropy; pair i of the global batch matches i.

    ``image`` and ``text`` are this rank's features (unnormalised ok); returns the loss and
    the in-batch top-1 accuracy (both directions averaged), for logging.
    """
    image = F.normalize(image.float(), dim=-1)
    text = F.normalize(text.float(), dim=-1)
    all_image, all_text = gather_with_local_grad(image), gather_with_local_grad(text)
    logits = temperature * all_image @ all_text.t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    with torch.no_grad():
        accuracy = 0.5 * ((logits.argmax(1) == labels).float().mean() + (logits.argmax(0) == labels).float().mean())
    return {"loss": loss, "accuracy": accuracy, "global_batch": logits.shape[0]}
