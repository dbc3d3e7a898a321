"""Checkpoints: atomic, complete enough to resume at the same step, and loaded safely.

A checkpoint holds the trainable weights, the optimiser and scheduler state, the step and
the run's identity (the config fields that define the run). It is written to a temporary
file and renamed, so the previous checkpoint survives a crash mid-write. Loading uses
``torch.load(weights_only=True)`` (no pickled code runs) and refuses a checkpoint whose
identity differs from the run resuming it, naming the file and the fields.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from infra.files import replacing

FORMAT = 1


class CheckpointMismatchError(ValueError):
    """A checkpoint written by a run with another configuration."""


def save_checkpoint(path: str | Path, *, step: int, identity: dict, model_state: dict,
                    optimizer: torch.optim.Optimizer, scheduler) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "step": step, "identity": identity, "model": model_state,
               "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    with replacing(path) as tmp:
        torch.save(payload, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
    return path


def load_checkpoint(path: str | Path, identity: dict) -> dict:
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable litflow checkpoint ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a litflow checkpoint (format {payload.get('format') if isinstance(payload, dict) else '?'})")
    saved = payload["identity"]
    differ = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
    if differ:
        detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs run {identity.get(k)!r}" for k in differ[:6])
        raise CheckpointMismatchError(f"{path}: checkpoint from another config ({detail})")
    return payload
