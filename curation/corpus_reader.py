"""Read a curated corpus (webdataset shards) for de-duplication: :class:`dedup.corpus.Corpus`.

The curation pipeline stores each pair's ``phash`` in its record (``KEY.json``) and the hash
settings it used in the run manifest (``corpus.json``'s ``hash_settings``).
When both are there, the stored hashes are used after checking the settings against the eval
index (a mismatch is an error, not a silent re-hash); otherwise the images are hashed here.

Memory: every image's bytes are held until they are hashed, when the corpus has no stored
hashes (a corpus curated by litflow has them, and then only the rows are held).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from curation.shards import list_shards, read_shard
from dedup.corpus import Corpus
from dedup.evalsets import image_member
from dedup.phash import HashSettings, hash_many_bytes
from infra.contract import CorpusManifest

def manifest_settings(corpus_dir: Path) -> HashSettings | None:
    """The hash settings recorded in the corpus's ``corpus.json``; None when it has none."""
    if not (corpus_dir / CorpusManifest.FILE).exists():
        return None
    return HashSettings.from_dict(CorpusManifest.read(corpus_dir).hash_settings)


def shard_paths(corpus_dir: Path) -> list[Path]:
    shards = list_shards(corpus_dir) or list_shards(corpus_dir / "shards")
    if not shards:
        raise FileNotFoundError(f"no shards (*.tar) in {corpus_dir} or {corpus_dir / 'shards'}")
    return shards


def read_corpus(corpus_dir: str | Path, settings: HashSettings) -> Corpus:
    """Every sample with an image; hashes from the records when their settings are ``settings``."""
    corpus_dir = Path(corpus_dir)
    recorded = manifest_settings(corpus_dir)
    if recorded is not None and recorded != settings:
        from dedup.phash import check_same_settings

        check_same_settings(recorded, settings, where=f"({corpus_dir / 'corpus.json'})")
    keys, refs, captions, digests, stored, blobs = [], [], [], [], [], []
    for shard in shard_paths(corpus_dir):
        for sample in read_shard(shard):
            ext = image_member(sample)
            if ext is None:
                continue
            record = {}
            if "json" in sample:
                try:
                    record = json.loads(sample["json"])
                except (json.JSONDecodeError, UnicodeDecodeError):
                    record = {}
            keys.append(sample["__key__"])
            refs.append(f"{shard}#{sample['__key__']}.{ext}")
            captions.append(sample["txt"].decode("utf-8", "replace") if "txt" in sample else record.get("caption"))
            digests.append(hashlib.sha256(sample[ext]).hexdigest())
            stored.append(record.get("phash") if recorded is not None else None)
            blobs.append(sample[ext])
    use_stored = bool(stored) and all(v is not None for v in stored)
    unreadable = []
    if use_stored:
        phash = np.asarray([int(v) & (2**64 - 1) for v in stored], np.uint64)
    else:
        values = []
        for key, result in zip(keys, hash_many_bytes(blobs, settings)):
            if isinstance(result, Exception):
                unreadable.append({"key": key, "error": f"{type(result).__name__}: {result}"})
                values.append(None)
            else:
                values.append(result[0])
        ok = [i for i, v in enumerate(values) if v is not None]
        keys, refs, captions, digests = ([seq[i] for i in ok] for seq in (keys, refs, captions, digests))
        phash = np.asarray([values[i] for i in ok], np.uint64)
    return Corpus(keys, refs, captions, digests, phash, settings, unreadable, not use_stored, str(corpus_dir))
