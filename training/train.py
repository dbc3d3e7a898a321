"""LiT training: one function, run once per process (plain ``python`` or under torchrun).

Modes are LiT's two letters (``training/config.py``): with a locked image tower (``LU``, ``Lu``,
``LL``) image features come from the embedding cache (``image_source="cache"``, the fast path)
or from the locked tower run on every batch (``"images"``, what open_clip's ``--lock-image``
does); ``U?`` trains the image tower from pretrained weights, ``u?`` from scratch. The text
letter: ``U`` fine-tunes a pretrained text tower, ``u`` trains a scratch one, ``L`` keeps a
pretrained one locked (only the heads and the temperature learn).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import torch

from training import distributed as D
from training.config import TrainConfig
from training.checkpoint import load_checkpoint, save_checkpoint
from training.data import PairStream, make_loader
from training.embed_cache import open_cache
from training.exclusions import exclusion_digest, load_exclusions
from training.image_towers import ImageTower, build_image_tower
from training.metrics import MetricsLog, plot_metrics
from training.model import LiTModel, compile_patterns
from training.schedule import warmup_cosine
from training.shard_inputs import read_manifest, resolve_shards
from training.step import compute_gradients
from training.text_towers import EmptyCaptionError, build_text_tower, train_tokenizer
from infra.files import file_sha256, write_json_atomic

class TrainingDiverged(RuntimeError):
    """The loss (or gradient norm) became NaN/inf; the last good checkpoint is kept."""


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def autocast_for(precision: str, device: torch.device):
    """bf16 autocast where the device supports it ("auto"), forced ("bf16") or off ("fp32")."""
    use = precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use else contextlib.nullcontext


def tokenize(model: LiTModel, captions: list[str], sources: list[tuple[str, str]]):
    try:
        return model.text.tokenize(captions)
    except EmptyCaptionError:
        for caption, (shard, key) in zip(captions, sources):
            try:
                model.text.tokenize([caption])
            except EmptyCaptionError:
                raise EmptyCaptionError(f"{shard}: caption of sample {key!r} tokenises to nothing: {caption!r}") from None
        raise


def _tokenizer(config: TrainConfig, shards: list[Path], info: D.DistInfo,
               excluded: frozenset[str] = frozenset()) -> Path | None:
    """Scratch text towers: train a WordPiece tokenizer on the corpus captions once (rank 0).

    Captions of excluded pairs are left out: an eval duplicate's caption shapes no vocabulary.
    """
    if config.text.name != "scratch":
        return None
    path = Path(config.out) / "tokenizer.json"
    if info.main and not path.exists():
        def captions():
            for shard in shards:
                manifest = read_manifest(shard, ("key", "caption"))
                yield from (c for k, c in zip(manifest["key"], manifest["caption"]) if k not in excluded)

        train_tokenizer(captions(), config.text.vocab_size, path)
    D.barrier()
    return path


def check_exclusions(shards: list[Path], excluded: frozenset[str], readers: int) -> int:
    """Validate every shard's manifest; returns how many pairs ``excluded`` drops per epoch.

    Everything excluded, or fewer pairs left than readers when readers split by sample, is an
    error here, before training (the endless stream would otherwise never yield a batch).
    """
    total = dropped = 0
    seen: Counter[str] = Counter()
    for shard in shards:
        keys = read_manifest(shard)["key"]  # missing/empty/broken shards fail here, by name
        total += len(keys)
        hits = [k for k in keys if k in excluded]
        dropped += len(hits)
        seen.update(hits)
    if excluded and dropped == total:
        raise ValueError(f"all {total} pairs of the {len(shards)} shard(s) are excluded "
                         f"({len(excluded)} excluded keys): nothing to train on")
    if len(shards) < readers and total - dropped < readers:
        raise ValueError(f"only {total - dropped} pair(s) left after exclusions ({dropped} excluded) "
                         f"for {readers} readers (ranks x loader workers): some would never get a pair")
    repeated = sorted(k for k, n in seen.items() if n > 1)
    if repeated:
        warnings.warn(f"{len(repeated)} excluded key(s) occur in more than one shard (shards of several "
                      f"corpora?), e.g. {repeated[:3]}: every pair with such a key is skipped", stacklevel=2)
    return dropped


class BuiltModel(NamedTuple):
    model: LiTModel
    tower: ImageTower          # its preprocessing and fingerprint
    preprocess: object | None  # pixels in (image_source "images"), or None (cached features)
    cache: object | None       # the embedding cache (image_source "cache"), or None


def build_model(config: TrainConfig, tokenizer: Path | None, device: torch.device) -> BuiltModel:
    """The LiT model of ``config``, identical on every rank (seeded), in training and evaluation.

    Training, the torchrun ranks and :func:`training.eval_model.load_run` all build through
    here, so a model option added to :class:`TrainConfig` is honoured everywhere at once.
    """
    tower = build_image_tower(config.image_tower, pretrained=config.image_pretrained, seed=config.seed,
                              fit=config.image_fit, fill=config.image_fill)
    cache = preprocess = None
    if config.image_source == "cache":
        cache = open_cache(config.cache, tower)
        image_module, image_dim = None, cache.dim
    else:
        if tower.module is None:
            if not config.image_locked:
                raise ValueError(f"image tower {tower.name!r} cannot be trained (mode {config.mode} needs a torch tower)")
            image_module = _Encode(tower.encode)
        else:
            image_module = tower.module
        image_dim, preprocess = tower.dim, tower.preprocess
    torch.manual_seed(config.seed)
    text = build_text_tower(config.text, tokenizer)
    model = LiTModel(text, image_dim, image_module, image_locked=config.image_locked,
                     text_locked=config.text_locked, embed_dim=config.embed_dim,
                     image_head=config.image_head, text_head=config.text_head,
                     temperature_init=config.temperature_init).to(device)
    freeze(model, config.freeze)
    return BuiltModel(model, tower, preprocess, cache)


def freeze(model: torch.nn.Module, patterns: list[str]) -> list[str]:
    """Freeze the parameters whose full name matches one of ``patterns``; returns their names.

    A pattern that matches no parameter is an error (a typo would otherwise train everything).
    """
    names = [name for name, _ in model.named_parameters()]
    frozen = []
    for pattern, rule in zip(patterns, compile_patterns(patterns, "freeze")):
        hits = [n for n in names if rule.fullmatch(n)]
        if not hits:
            shown = ", ".join(sorted({n.rsplit(".", 2)[0] + ".*" for n in names})[:12])
            raise ValueError(f"freeze pattern '{pattern}' matches no parameter; parameters look like: {shown}")
        frozen += hits
    params = dict(model.named_parameters())
    for name in frozen:
        params[name].requires_grad_(False)
    return sorted(set(frozen))


class _Encode(torch.nn.Module):
    """Wraps a non-torch locked tower (ONNX) so the model can call it like a module."""

    def __init__(self, encode):
        super().__init__()
        self.encode = encode

    def forward(self, x):
        return self.encode(x)


def train(config: TrainConfig, on_step=None) -> dict:
    """Train to ``config.steps``, resuming from ``out/checkpoint.pt`` when it exists.

    ``on_step(step, row)``, if given, is called after each step's metrics, before any
    checkpoint (progress reporting, or a benchmark reading memory at a chosen step).
    """
    start = time.time()
    device = pick_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    info = D.init_from_env(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if config.batch_size % info.world:
        raise ValueError(f"global batch {config.batch_size} does not split over {info.world} ranks")
    excluded = load_exclusions(config.exclude)  # once; a missing or key-less file fails here
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if info.main:  # the whole resolved config, defaults included: `litflow train --config OUT/config.json`
        write_json_atomic(out / "config.json", config.model_dump(mode="json"), sort_keys=True)
    shards = resolve_shards(config.shards)
    excluded_pairs = check_exclusions(shards, excluded, info.world * max(1, config.workers))
    tokenizer = _tokenizer(config, shards, info, excluded)
    identity = config.identity(info.world, file_sha256(tokenizer) if tokenizer else None, excluded)
    model, _, preprocess, cache = build_model(config, tokenizer, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(model.param_groups(config.weight_decay, config.lr, config.lr_mults,
                                                       config.text_lr_rules), lr=config.lr,
                                  betas=(0.9, 0.999))
    scheduler = warmup_cosine(optimizer, config.warmup, config.steps)
    ckpt_path = out / "checkpoint.pt"
    step = 0
    if ckpt_path.exists():
        payload = load_checkpoint(ckpt_path, identity)
        model.load_trainable_state(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        step = int(payload["step"])
    metrics = MetricsLog(out / "metrics.jsonl", step) if info.main else None
    stream = PairStream(shards, config.batch_size // info.world, cache=cache, preprocess=preprocess,
                        seed=config.seed, shuffle_buffer=config.shuffle_buffer, rank=info.rank,
                        world=info.world, start_batch=step, exclude=excluded)
    autocast = autocast_for(config.precision, device)
    model.train()
    last_good = step if ckpt_path.exists() else None
    tick, result = time.time(), {"out": str(out), "start_step": step}
    saved_at = tick

    def checkpoint_due(since: float) -> bool:
        """``checkpoint_minutes`` passed on some rank (all ranks agree, so they save together)."""
        if config.checkpoint_minutes is None:
            return False
        return not D.all_ranks_ok(time.time() - since < 60 * config.checkpoint_minutes, device)
    result.update(excluded_keys=len(excluded), excluded_pairs=excluded_pairs,
                  exclude_sha256=exclusion_digest(excluded) if excluded else None)
    batches = make_loader(stream, config.workers) if step < config.steps else []
    for batch in batches:
        if step >= config.steps or (config.stop_after is not None and step - result["start_step"] >= config.stop_after):
            break
        ids, mask = tokenize(model, batch.captions, batch.sources)
        out_loss = compute_gradients(model, batch.image.to(device, non_blocking=True), ids.to(device),
                                     mask.to(device), autocast, config.micro_batch)
        temperature = out_loss["temperature"]
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.clip)
        loss = float(out_loss["loss"].detach())
        if not D.all_ranks_ok(math.isfinite(loss) and math.isfinite(float(grad_norm)), device):
            where = f"{ckpt_path} (step {last_good})" if last_good is not None else "none (no checkpoint yet)"
            if metrics:
                metrics.write({"step": step + 1, "loss": loss, "grad_norm": float(grad_norm), "stopped": "non-finite"})
            raise TrainingDiverged(f"loss became {loss} (grad norm {float(grad_norm)}) at step {step + 1}; "
                                   f"stopped; last good checkpoint kept: {where}")
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        step += 1
        now = time.time()
        if metrics:
            metrics.write({"step": step, "loss": loss, "accuracy": float(out_loss["accuracy"]),
                           "temperature": float(temperature.detach()), "lr": lr, "grad_norm": float(grad_norm),
                           "global_batch": int(out_loss["global_batch"]),
                           "pairs_per_s": config.batch_size / max(now - tick, 1e-9), "time": now - start})
        tick = now
        if on_step is not None:
            on_step(step, {"loss": loss, "lr": lr, "grad_norm": float(grad_norm)})
        stopping = config.stop_after is not None and step - result["start_step"] >= config.stop_after
        if step % config.checkpoint_every == 0 or step == config.steps or stopping or checkpoint_due(saved_at):
            if info.main:
                save_checkpoint(ckpt_path, step=step, identity=identity, model_state=model.trainable_state(),
                                optimizer=optimizer, scheduler=scheduler)
                plot_metrics(out / "metrics.jsonl", out / "metrics.png")
            D.barrier()
            last_good, saved_at = step, time.time()
        if stopping:
            break
    result.update(step=step, checkpoint=str(ckpt_path), metrics=str(out / "metrics.jsonl"),
                  seconds=time.time() - start, rank=info.rank, world=info.world)
    return result
