"""bench/synthetic_shards.py: img2dataset-shaped, deterministic, cached, and every per-record
rule finds something to do in it."""

from __future__ import annotations

import hashlib
import io
import json
import sys
from collections import Counter
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.synthetic_shards import GENERATOR_VERSION, generate, planted  # noqa: E402
from curation.checks import examine  # noqa: E402
from curation.config import load_config  # noqa: E402
from curation.shards import list_shards, read_shard  # noqa: E402

N = 2500


def test_shape_determinism_and_cache(tmp_path):
    raw = generate(N, seed=3, root=tmp_path / "a")
    assert raw.name == f"v{GENERATOR_VERSION}-n{N}-seed3"
    shards = list_shards(raw)
    assert [s.name for s in shards] == ["00000.tar", "00001.tar", "00002.tar"]
    assert [p.name for p in raw.parent.iterdir()] == [raw.name]  # no partial folder left behind

    samples = [(s.stem, i, x) for s in shards for i, x in enumerate(read_shard(s))]
    assert len(samples) == N
    assert Counter(stem for stem, _, _ in samples) == {"00000": 1000, "00001": 1000, "00002": 500}
    for stem, _, sample in samples:
        key = sample["__key__"]
        assert len(key) == 9 and key.isdigit() and int(key) // 10_000 in (int(stem), int(stem) - 1)
        meta = json.loads(sample["json"])
        assert meta["key"] == key and meta["status"] == "success" and meta["url"].startswith("https://")
        assert meta["original_width"] > 0 and meta["original_height"] > 0
        assert meta["caption"] == (sample["txt"].decode() if "txt" in sample else None)
    intact = [x for _, _, x in samples if hashlib.sha256(x["jpg"]).hexdigest() == json.loads(x["json"])["sha256"]]
    assert len(intact) >= N * 0.99  # all but the deliberately truncated ones
    for sample in intact[:50]:
        image = Image.open(io.BytesIO(sample["jpg"]))
        image.load()
        assert image.format == "JPEG" and image.size == (64, 64)

    hashes = Counter(hashlib.sha256(x["jpg"]).digest() for _, _, x in samples)
    counts = planted(raw)["planted"]
    copies = counts["placeholder"] + counts["popular_copy"]
    assert len(hashes) >= N - copies - 5  # every other picture is distinct
    assert hashes.most_common(1)[0][1] == counts["placeholder"]
    assert Counter(x["txt"] for _, _, x in samples if "txt" in x).most_common(1)[0][1] > 10  # boilerplate

    again = generate(N, seed=3, root=tmp_path / "b")
    for one, two in zip(shards, list_shards(again)):
        assert one.read_bytes() == two.read_bytes()
    mtime = (raw / "DONE").stat().st_mtime_ns
    assert generate(N, seed=3, root=tmp_path / "a") == raw and (raw / "DONE").stat().st_mtime_ns == mtime
    other = generate(1000, seed=4, root=tmp_path / "a")
    assert (other / "00000.tar").read_bytes() != (raw / "00000.tar").read_bytes()


def test_every_per_record_rule_fires(tmp_path):
    raw = generate(N, seed=0, root=tmp_path)
    config = load_config("align")
    failures = Counter()
    keys = Counter()
    for shard in list_shards(raw):
        for index, sample in enumerate(read_shard(shard)):
            keys[sample["__key__"]] += 1
            failures.update(list(examine(sample, shard.stem, index, config).failures))
    for reason in ("too_small", "aspect_ratio", "decode_error", "text_too_short", "text_too_many_words",
                   "text_empty", "missing_text"):
        assert failures[reason] > 0, (reason, failures)
    assert failures["too_small"] < N * 0.15 and failures["aspect_ratio"] < N * 0.1
    assert sum(c - 1 for c in keys.values()) == planted(raw)["planted"]["duplicate_key"] > 0
