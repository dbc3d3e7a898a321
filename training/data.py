"""Streaming pairs from curated shards: split by rank and worker, shuffled through a buffer.

Nothing but the shard list is held in memory: each reader streams its shards one at a time
through a fixed-size shuffle buffer. The stream is endless (epoch after epoch, each with its
own seeded shard order), so every rank always has a next batch and no rank can hang in a
collective waiting for another that ran dry. Batches are formed inside the reader so that a
resumed run can skip exactly the batches already trained on, before decoding anything.

Split: reader g = rank * workers + worker of G = world * workers takes shards g, g+G, ...
of the epoch's order; with fewer shards than readers it reads every shard and keeps
samples g, g+G, ... instead.

Excluded pairs (``exclude``: keys, e.g. eval-duplicate flags, see :mod:`training.exclusions`)
are dropped as each shard is read, before the split by sample, the shuffle buffer and
batching: batches stay full and a resumed run skips exactly the batches it trained on. A
shard all of whose pairs are excluded is not opened again; a reader that can never get a
pair (everything excluded, or fewer pairs than readers) raises instead of looping forever.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from curation.shards import read_shard
from training.embed_cache import EmbeddingCache
from training.image_towers import Preprocess
from training.shard_inputs import read_manifest


@dataclass
class Batch:
    image: torch.Tensor           # (B, dim) cached embeddings or (B, 3, S, S) pixels
    captions: list[str]
    sources: list[tuple[str, str]]  # (shard path, key) per pair, for error messages


def _cached_samples(cache: EmbeddingCache, shard: Path, exclude: frozenset[str] = frozenset()) -> Iterator[tuple]:
    matrix, keys = cache.load(shard)
    captions = read_manifest(shard, ("key", "caption"))["caption"]
    for index, (key, caption) in enumerate(zip(keys, captions)):
        if key in exclude:
            continue
        yield np.asarray(matrix[index], dtype=np.float32), caption, str(shard), key


def _image_samples(shard: Path, exclude: frozenset[str] = frozenset()) -> Iterator[tuple]:
    read_manifest(shard, ("key",))  # fails early, naming the file, on an empty or broken shard
    for sample in read_shard(shard):
        if sample["__key__"] in exclude:
            continue
        if "jpg" not in sample or "txt" not in sample:
            raise ValueError(f"{shard}: sample {sample['__key__']!r} lacks its .jpg or .txt")
        yield sample["jpg"], sample["txt"].decode("utf-8"), str(shard), sample["__key__"]


class PairStream(IterableDataset):
    """Endless stream of :class:`Batch` of ``batch_size`` pairs for one rank."""

    def __init__(self, shards: list[Path], batch_size: int, *, cache: EmbeddingCache | None = None,
                 preprocess: Preprocess | None = None, seed: int = 0, shuffle_buffer: int = 1000,
                 rank: int = 0, world: int = 1, start_batch: int = 0, exclude: frozenset[str] = frozenset()):
        if (cache is None) == (preprocess is None):
            raise ValueError("give either an embedding cache (a locked image tower) or an image preprocessing (a trained one)")
        self.shards, self.batch_size, self.cache, self.preprocess = list(shards), batch_size, cache, preprocess
        self.seed, self.buffer, self.rank, self.world, self.start_batch = seed, shuffle_buffer, rank, world, start_batch
        self.exclude = frozenset(exclude)

    def _shard_samples(self, index: int, empty: set[int]) -> Iterator[tuple]:
        """Shard ``index``'s pairs less the excluded ones; notes it in ``empty`` when none is left."""
        shard = self.shards[index]
        samples = _cached_samples(self.cache, shard, self.exclude) if self.cache is not None \
            else _image_samples(shard, self.exclude)
        count = 0
        for count, sample in enumerate(samples, 1):
            yield sample
        if count == 0:  # shards are never empty (read_manifest refuses them): all its pairs are excluded
            empty.add(index)

    def _samples(self, reader: int, readers: int) -> Iterator[tuple]:
        empty: set[int] = set()  # shards with every pair excluded: skipped from then on (same stream)
        for epoch in itertools.count():
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
            by_shard = len(self.shards) >= readers
            mine = order[reader::readers] if by_shard else order
            read = [0]

            def counted(stream):
                for sample in stream:
                    read[0] += 1
                    yield sample

            stream = counted(itertools.chain.from_iterable(self._shard_samples(int(i), empty)
                                                           for i in mine if i not in empty))
            if not by_shard:
                stream = itertools.islice(stream, reader, None, readers)
            yielded = 0
            for yielded, sample in enumerate(stream, 1):
                yield sample
            if yielded:
                continue
            if len(empty) == len(self.shards):
                raise ValueError(f"all pairs of the {len(self.shards)} shard(s) are excluded "
                                 f"({len(self.exclude)} excluded keys): nothing to train on")
            if not by_shard:  # the same pairs every epoch: this reader will never get one
                raise ValueError(f"only {read[0]} pair(s) left after exclusions for {readers} readers "
                                 f"(ranks x loader workers): reader {reader} gets none")
            # by shard: this epoch gave this reader only fully excluded shards; a later one will not

    def _shuffled(self, reader: int, readers: int) -> Iterator[tuple]:
        rng = np.random.default_rng([self.seed, 1_000_003, reader])
        buffer: list[tuple] = []
        for sample in self._samples(reader, readers):
            if len(buffer) < self.buffer:
                buffer.append(sample)
                continue
            index = int(rng.integers(len(buffer)))
            buffer[index], sample = sample, buffer[index]
            yield sample

    def _collate(self, samples: list[tuple]) -> Batch:
        if self.cache is not None:
            image = torch.from_numpy(np.stack([s[0] for s in samples]))
        else:
            decoded = []
            for data, _, shard, key in samples:
                try:
                    decoded.append(self.preprocess.decode(data))
                except Exception as err:
                    raise ValueError(f"{shard}: sample {key!r}: image does not decode ({err})") from err
            image = torch.from_numpy(np.stack(decoded))
        return Batch(image, [s[1] for s in samples], [(s[2], s[3]) for s in samples])

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader, readers = self.rank * workers + worker, self.world * workers
        # the loader takes the rank's batch b from worker b % workers
        skip = max(0, (self.start_batch - worker + workers - 1) // workers)
        samples = self._shuffled(reader, readers)
        for index in itertools.count():
            chunk = list(itertools.islice(samples, self.batch_size))
            if index >= skip:
                yield self._collate(chunk)


def make_loader(stream: PairStream, workers: int = 0) -> DataLoader:
    return DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
