"""A corpus as de-duplication sees it: one row per pair (key, caption, sha256, pHash, where).

Only arrays and records: reading them from curated shards is curation's job
(:func:`curation.corpus_reader.read_corpus`), so this base layer never opens a shard path.
Memory: the whole corpus's keys, refs, captions and hashes (about 200 bytes a pair): this is
the in-memory audit of ``litflow dedup report``, sized for corpora that fit one machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dedup.phash import HashSettings


@dataclass
class Corpus:
    keys: list[str]
    refs: list[str]            # shard.tar#member: where the image bytes are (for thumbnails)
    captions: list[str | None]
    sha256: list[str]
    phash: np.ndarray           # uint64
    settings: HashSettings
    unreadable: list[dict]
    hashed_here: bool
    source: str = ""           # where it was read from, for the report

    def __len__(self) -> int:
        return len(self.keys)

