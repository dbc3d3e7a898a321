"""torchrun plumbing: process-group set-up from the environment, and exact gradient sync.

Gradients are synchronised by hand rather than with DDP because the global-batch loss
needs two different reductions (SUM for everything reached through the local features,
MEAN for the temperature, see :mod:`training.loss`); DDP can only average everything,
which would make the loss and gradients differ from a single process on the same batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_from_env(device: torch.device | None = None) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def sync_gradients(params_sum: list[torch.Tensor], params_mean: list[torch.Tensor]) -> None:
    """All-reduce gradients in one flat bucket per group: SUM for ``params_sum``, MEAN for ``params_mean``."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for params, average in ((params_sum, False), (params_mean, True)):
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            continue
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        if average:
            flat /= dist.get_world_size()
        for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            grad.copy_(synced)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_ranks_ok(ok: bool, device: torch.device | None = None) -> bool:
    """True only when every rank says ok (so all ranks stop together on a NaN)."""
    if not (dist.is_available() and dist.is_initialized()):
        return ok
    flag = torch.tensor([0 if ok else 1], dtype=torch.int64, device=device)
    dist.all_reduce(flag)
    return int(flag.item()) == 0


def broadcast_object(obj, src: int = 0):
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
