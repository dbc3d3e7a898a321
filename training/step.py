"""One optimisation step's gradient computation, shared by the trainer, the multi-node
equivalence test and the benchmark, so all three measure the same code.

With ``micro_batch`` the rank's batch is processed in slices without changing the loss, which
stays the contrastive loss over the whole global batch (GradCache, Gao et al. 2021):

1. every slice runs forward *without* gradients; only its (B_slice, D) features are kept;
2. the loss over all features (and the other ranks', see :mod:`training.loss`) is
   differentiated down to the features only: d loss / d features, (B_local, D);
3. every slice runs forward again *with* gradients and back-propagates its rows of that
   feature gradient into the towers.

Memory: the activations of one slice instead of the whole local batch, plus the features
(B_local × D) and their gradients. Cost: one extra forward pass. Each slice's random state
(dropout) is recorded in pass 1 and replayed in pass 3, so both passes compute the same
function; buffers (batch-norm running statistics) are restored after pass 1, so each slice
updates them once, as without slicing. Batch norm in training mode normalises over the
slice, not the whole batch: that is why ``micro_batch`` is part of a run's identity.
"""

from __future__ import annotations

import contextlib

import torch

from training import distributed as D
from training.loss import contrastive_loss
from training.model import LiTModel


def sync_groups(model: LiTModel) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(parameters whose rank gradients add up, the temperature whose rank gradients are averaged)."""
    temperature = list(model.temperature.parameters())
    others = [p for p in model.parameters() if p.requires_grad and all(p is not t for t in temperature)]
    return others, temperature


def _no_autocast():
    return torch.autocast("cpu", enabled=False)


def compute_gradients(model: LiTModel, image: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                      autocast=None, micro_batch: int | None = None) -> dict:
    """Forward, global-batch loss, backward and gradient sync; returns the loss dict.

    ``micro_batch``: at most this many pairs per forward/backward pass (see the module
    docstring); None, or a slice as large as the batch, is one pass.
    """
    autocast = autocast or _no_autocast
    if micro_batch is not None and micro_batch < image.shape[0]:
        out = _sliced_gradients(model, image, ids, mask, autocast, micro_batch)
    else:
        with autocast():
            image_features, text_features, temperature = model(image, ids, mask)
        out = contrastive_loss(image_features, text_features, temperature)
        model.zero_grad(set_to_none=True)
        out["loss"].backward()
        out["temperature"] = temperature.detach()
    D.sync_gradients(*sync_groups(model))
    return out


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


@contextlib.contextmanager
def _replayed(state: tuple, device: torch.device):
    """Run with the random state of pass 1 (dropout masks repeat); the outer state is untouched."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield


def _sliced_gradients(model: LiTModel, image, ids, mask, autocast, micro_batch: int) -> dict:
    slices = [slice(start, start + micro_batch) for start in range(0, image.shape[0], micro_batch)]
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    states, image_parts, text_parts = [], [], []
    with torch.no_grad():  # pass 1: features only
        for part in slices:
            states.append(_rng_state(image.device))
            with autocast():
                image_features, text_features, _ = model(image[part], ids[part], mask[part])
            image_parts.append(image_features.float())
            text_parts.append(text_features.float())
    for name, buffer in model.named_buffers():  # pass 3 updates the running statistics, once
        buffer.copy_(buffers[name])
    image_all = torch.cat(image_parts).requires_grad_(True)
    text_all = torch.cat(text_parts).requires_grad_(True)
    temperature = model.temperature()
    out = contrastive_loss(image_all, text_all, temperature)  # pass 2: the global loss, to the features
    model.zero_grad(set_to_none=True)
    out["loss"].backward()
    for part, state in zip(slices, states):  # pass 3: each slice again, with gradients
        with _replayed(state, image.device), autocast():
            image_features, text_features, _ = model(image[part], ids[part], mask[part])
        pairs = [(f.float(), g[part]) for f, g in ((image_features, image_all.grad), (text_features, text_all.grad))
                 if f.requires_grad]  # a locked, head-less image side has nothing to train
        if pairs:
            torch.autograd.backward([f for f, _ in pairs], [g for _, g in pairs])
    out["temperature"] = temperature.detach()
    return out
