"""Learning-rate schedule: linear warm-up then cosine decay to zero (LiT / big_vision)."""

from __future__ import annotations

import math

import torch


class WarmupCosine:
    """LR multiplier; its state is plain numbers, so the scheduler state loads with weights_only=True."""

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = warmup, max(total, 1)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total))
