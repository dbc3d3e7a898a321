"""Training skips pairs listed in exclusion files (eval-duplicate flags), shards untouched."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from flows.cli import main as litflow
from training.checkpoint import CheckpointMismatchError
from training.data import PairStream
from training.embed_cache import open_cache
from training.exclusions import exclusion_digest, load_exclusions
from training.image_towers import build_image_tower
from training.metrics import read_metrics
from training.shard_inputs import read_manifest, resolve_shards
from training.train import TrainConfig, train
from tests.conftest import SMALL_TEXT


@pytest.fixture(scope="module")
def pairs(embedded_demo_corpus) -> dict[str, str]:
    """key -> caption of every pair of the corpus."""
    out = {}
    for shard in resolve_shards([embedded_demo_corpus / "shards"]):
        manifest = read_manifest(shard)
        out.update(zip(manifest["key"], manifest["caption"]))
    return out


def _flags(path, keys, shard="somewhere/00000.tar"):
    """An eval_flags.parquet as dedup writes it (key plus columns training ignores)."""
    keys = list(keys)
    pd.DataFrame({"key": keys, "eval_set": ["emoji"] * len(keys), "eval_split": ["test"] * len(keys),
                  "eval_key": [f"e{i}" for i in range(len(keys))], "cosine": [0.99] * len(keys),
                  "shard": [shard] * len(keys)}).to_parquet(path)
    return str(path)


# every pair of shard 00002 (a shard that is excluded as a whole) and five pairs elsewhere
EXCLUDED = [f"00002{i:04d}" for i in range(24)] + ["000000003", "000000017", "000010000", "000010023", "000030011"]


def _config(corpus, out, **overrides) -> TrainConfig:
    values = dict(shards=[str(corpus / "shards")], out=str(out), image_tower="tiny", cache=str(corpus / "cache"),
                  text=SMALL_TEXT, batch_size=16, steps=4, lr=2e-3, warmup=1, shuffle_buffer=16,
                  checkpoint_every=2, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


def _reader_args(corpus, source):
    tower = build_image_tower("tiny")
    if source == "cache":
        return {"cache": open_cache(corpus / "cache", tower)}
    return {"preprocess": tower.preprocess}


@pytest.mark.parametrize("source", ["cache", "images"])
def test_reader_drops_excluded_pairs_over_a_full_epoch(embedded_demo_corpus, pairs, tmp_path, source):
    shards = resolve_shards([embedded_demo_corpus / "shards"])
    excluded = load_exclusions([_flags(tmp_path / "eval_flags.parquet", EXCLUDED)])
    assert excluded == frozenset(EXCLUDED) and excluded <= pairs.keys()
    kept = {k: c for k, c in pairs.items() if k not in excluded}
    assert len(kept) == 96 - 29
    only_excluded_captions = {pairs[k] for k in excluded} - set(kept.values())
    assert len(only_excluded_captions) > 20  # the caption check below means something

    # one reader (split by shard): a buffer of 1 passes the pairs on in stream order, so the
    # first 67 pairs are the first epoch, followed by the start of the second
    stream = PairStream(shards, 8, seed=3, shuffle_buffer=1, exclude=excluded, **_reader_args(embedded_demo_corpus, source))
    batches = [b for _, b in zip(range(9), stream)]
    assert all(len(b.captions) == len(b.sources) == len(b.image) == 8 for b in batches)  # still full
    keys = [key for b in batches for _, key in b.sources]
    captions = {c for b in batches for c in b.captions}
    assert set(keys) == kept.keys()  # every kept pair appears, no excluded one does
    assert len(set(keys[:67])) == 67  # the first epoch: each kept pair exactly once
    assert captions == set(kept.values()) and not captions & only_excluded_captions
    assert all(kept[key] == caption for b in batches for (_, key), caption in zip(b.sources, b.captions))

    # resuming skips exactly the consumed batches of the filtered stream
    resumed = PairStream(shards, 8, seed=3, shuffle_buffer=1, exclude=excluded, start_batch=5,
                         **_reader_args(embedded_demo_corpus, source))
    assert [b.sources for _, b in zip(range(4), resumed)] == [b.sources for b in batches[5:9]]

    if source == "cache":
        # eight ranks, four shards: readers split by pair, after the exclusions
        seen = []
        for rank in range(8):
            rank_stream = PairStream(shards, 4, seed=3, shuffle_buffer=1, exclude=excluded, rank=rank, world=8,
                                     **_reader_args(embedded_demo_corpus, source))
            seen += [key for _, b in zip(range(3), rank_stream) for _, key in b.sources]
        assert set(seen) == kept.keys()


def test_training_with_exclusions_records_them(embedded_demo_corpus, tmp_path, capsys):
    first = _flags(tmp_path / "a.parquet", EXCLUDED[:20])
    second = _flags(tmp_path / "b.parquet", EXCLUDED[15:] + ["not-in-this-corpus"])  # overlaps the first
    out = tmp_path / "run"
    code = litflow(["train", str(embedded_demo_corpus / "shards"), "--out", str(out), "--image-tower", "tiny",
                    "--cache", str(embedded_demo_corpus / "cache"), "--text-name", "scratch", "--text-width", "64",
                    "--text-depth", "2", "--text-heads", "2", "--text-vocab-size", "1000", "--batch-size", "16",
                    "--steps", "4", "--warmup", "1", "--shuffle-buffer", "16", "--checkpoint-every", "2",
                    "--workers", "2", "--exclude", first, "--exclude", second])  # loader workers filter too
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out[captured.out.index("{"):])
    keys = frozenset(EXCLUDED) | {"not-in-this-corpus"}
    assert result["excluded_keys"] == 30 and result["excluded_pairs"] == 29  # one key is not in the corpus
    assert result["exclude_sha256"] == exclusion_digest(keys) and result["step"] == 4
    identity = torch.load(out / "checkpoint.pt", weights_only=True)["identity"]
    assert identity["excluded_keys"] == 30 and identity["exclude_sha256"] == exclusion_digest(keys)
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]


def test_train_help_documents_exclude(capsys):
    with pytest.raises(SystemExit):
        litflow(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--exclude FILE" in text and "eval_flags.parquet" in text and "Repeatable" in text


def test_resume_needs_the_same_exclusions(embedded_demo_corpus, tmp_path):
    flags = _flags(tmp_path / "flags.parquet", EXCLUDED)
    straight = train(_config(embedded_demo_corpus, tmp_path / "a", exclude=[flags]))
    train(_config(embedded_demo_corpus, tmp_path / "b", exclude=[flags], stop_after=2))
    other = _flags(tmp_path / "other.parquet", EXCLUDED[:-1])
    with pytest.raises(CheckpointMismatchError, match=r"exclude_sha256: checkpoint '[0-9a-f]{64}' vs run '[0-9a-f]"):
        train(_config(embedded_demo_corpus, tmp_path / "b", exclude=[other]))
    with pytest.raises(CheckpointMismatchError, match=r"excluded_keys: checkpoint 29 vs run None"):
        train(_config(embedded_demo_corpus, tmp_path / "b"))
    # the same key set from another file (other order, a null, other columns) is the same run
    same = tmp_path / "same.parquet"
    pd.DataFrame({"key": list(reversed(EXCLUDED)) + [None], "note": ["x"] * 30}).to_parquet(same)
    resumed = train(_config(embedded_demo_corpus, tmp_path / "b", exclude=[str(same)]))
    assert resumed["start_step"] == 2 and resumed["step"] == straight["step"] == 4
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(value, b[key]) for key, value in a.items())  # resumed bit for bit
    # an exclusion list that holds no key is no exclusion: runs without one keep their identity
    config = _config(embedded_demo_corpus, tmp_path / "c")
    nothing = load_exclusions([_flags(tmp_path / "none.parquet", [])])  # as dedup writes it: a double column
    assert nothing == frozenset() and config.identity(1, None, nothing) == config.identity(1, None)


def test_bad_exclusion_files_fail_at_start_naming_them(embedded_demo_corpus, tmp_path, capsys):
    missing = tmp_path / "nope" / "eval_flags.parquet"
    with pytest.raises(ValueError, match=rf"{missing}: exclusion file does not exist"):
        train(_config(embedded_demo_corpus, tmp_path / "run", exclude=[str(missing)]))
    assert not (tmp_path / "run").exists()  # before anything was written
    keyless = tmp_path / "keyless.parquet"
    pd.DataFrame({"eval_key": ["a"], "shard": ["s"]}).to_parquet(keyless)
    with pytest.raises(ValueError, match=rf"{keyless}: exclusion file has no 'key' column"):
        train(_config(embedded_demo_corpus, tmp_path / "run", exclude=[_flags(tmp_path / "ok.parquet", ["x"]), str(keyless)]))
    numbers = tmp_path / "numbers.parquet"
    pd.DataFrame({"key": [1, 2]}).to_parquet(numbers)
    with pytest.raises(ValueError, match=rf"{numbers}: 'key' column holds int64, not strings"):
        load_exclusions([numbers])
    text = tmp_path / "flags.csv"
    text.write_text("key\n000000003\n")
    with pytest.raises(ValueError, match=rf"{text}: unreadable exclusion file"):
        load_exclusions([text])
    assert litflow(["train", str(embedded_demo_corpus / "shards"), "--out", str(tmp_path / "cli"), "--image-tower", "tiny",
                    "--cache", str(embedded_demo_corpus / "cache"), "--exclude", str(missing)]) == 2
    assert f"litflow train: error: {missing}: exclusion file does not exist" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_everything_excluded_is_an_error_not_a_hang(embedded_demo_corpus, pairs, tmp_path):
    everything = _flags(tmp_path / "all.parquet", pairs)
    with pytest.raises(ValueError, match=r"all 96 pairs of the 4 shard\(s\) are excluded"):
        train(_config(embedded_demo_corpus, tmp_path / "run", exclude=[everything]))
    shards = resolve_shards([embedded_demo_corpus / "shards"])
    for world in (1, 8):  # split by shard, and by pair
        for source in ("cache", "images"):
            stream = PairStream(shards, 8, exclude=frozenset(pairs), world=world, **_reader_args(embedded_demo_corpus, source))
            with pytest.raises(ValueError, match=r"all pairs of the 4 shard\(s\) are excluded"):
                next(iter(stream))
    # three pairs left for eight readers splitting by pair: the ones left without a pair fail
    left = sorted(pairs)[:3]
    excluded = frozenset(pairs) - set(left)
    with pytest.raises(ValueError, match=r"only 3 pair\(s\) left after exclusions for 8 readers.*reader 5 gets none"):
        next(iter(PairStream(shards, 1, exclude=excluded, rank=5, world=8, **_reader_args(embedded_demo_corpus, "cache"))))
    with pytest.raises(ValueError, match=r"only 3 pair\(s\) left after exclusions \(93 excluded\) for 8 readers"):
        train(_config(embedded_demo_corpus, tmp_path / "run2", workers=8, exclude=[_flags(tmp_path / "most.parquet", excluded)]))
