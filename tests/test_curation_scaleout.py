"""The scale-out pieces of curation on their own: the rare-token tie rule, the multi-index
buckets, corpus de-duplication as keyed joins (against the union-find rule it replaces), and
raw shards that change between passes."""

from __future__ import annotations

import io
import os
from collections import Counter
import json
import random
import tarfile

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from PIL import Image

from curation.config import load_config
from curation.corpus_dedup import ExactDuplicates, NearDuplicates, blocks, wire_phash
from curation.corpus_rules import frequent_threshold
from curation.shard_passes import RawShardChanged, decide_shard, examine_shard, write_shard_outputs
from dedup.intra import duplicates_to_drop


# ---- rare tokens: the frequent set is df >= T, at most K grams, boundary ties whole ----------

def _frequent(df: dict[str, int], k: int) -> set[str]:
    histogram: dict[int, int] = {}
    for value in df.values():
        histogram[value] = histogram.get(value, 0) + 1
    threshold = frequent_threshold(histogram, k)
    return {g for g, d in df.items() if d >= threshold}


def test_frequent_set_takes_boundary_ties_whole():
    df = {"a": 9, "b": 7, "c": 7, "d": 7, "e": 2}
    assert _frequent(df, 1) == {"a"}
    assert _frequent(df, 3) == {"a"}            # a + three tied at 7 would be 4 > 3: the tie stays out
    assert _frequent(df, 4) == {"a", "b", "c", "d"}
    assert _frequent(df, 5) == set(df)
    assert _frequent(df, 0) == set()
    assert frequent_threshold({}, 10) == 1       # nothing counted: nothing is rare either


@pytest.mark.parametrize("seed", range(5))
def test_frequent_set_is_the_largest_df_closed_set_within_k(seed):
    rng = random.Random(seed)
    df = {f"g{i}": rng.choice([1, 1, 1, 2, 2, 3, 5, 8, 13]) for i in range(200)}
    for k in (0, 10, 50, 100, 150, 200):
        frequent = _frequent(df, k)
        assert len(frequent) <= k
        # closed upwards: everything more frequent than a member is a member
        floor = min((df[g] for g in frequent), default=max(df.values()) + 1)
        assert frequent == {g for g, d in df.items() if d >= floor}
        # and the next df value down would overflow K
        lower = [d for d in df.values() if d < floor]
        if lower:
            assert sum(1 for d in df.values() if d >= max(lower)) > k


def _corpus_findings(facts_by_shard, config, buckets, tmp_path):
    """CorpusRules' findings ({(shard, reason): values}) and df threshold, on the FnApiRunner,
    with every table spread over ``buckets`` buckets."""
    from curation.corpus_rules import CorpusRules

    rules = CorpusRules(config, None, str(tmp_path / "out"))
    rules.buckets = dict.fromkeys(rules.buckets, buckets)
    path = tmp_path / f"found-{buckets}.json"

    def save(pairs, stats):
        found = {}
        for shard, (reason, value, _) in pairs:
            found.setdefault(f"{shard} {reason}", []).append(value.hex() if isinstance(value, bytes) else value)
        path.write_text(json.dumps({"found": found, "threshold": stats["rare_tokens_threshold_df"]}))

    with beam.Pipeline(runner=FnApiRunner()) as p:
        rules.shard_paths = p | "paths" >> beam.Create([(s, f"{s:05d}.tar") for s in facts_by_shard])
        out = p | beam.Create(list(facts_by_shard.values())) | rules
        _ = (out["findings"] | beam.combiners.ToList()
             | beam.Map(save, beam.pvalue.AsSingleton(out["stats"])))
    result = json.loads(path.read_text())
    found = {}
    for shard_reason, values in result["found"].items():
        shard, reason = shard_reason.split(" ")
        if reason == "text_rare_tokens":  # packed 8-byte gram ids
            values = [int.from_bytes(bytes.fromhex(v)[i:i + 8], "little") for v in values
                      for i in range(0, len(v) // 2, 8)]
        found[(int(shard), reason)] = sorted(values, key=str)
    return found, result["threshold"]


@pytest.mark.parametrize("seed", [0, 1])
def test_corpus_rules_packed_in_buckets_equal_the_rules_whatever_the_bucket_count(seed, tmp_path):
    """Each table travels packed per (bucket, shard); the findings are the rules' own, computed
    here from the facts, with 1 bucket (everything together), a few, or one per value: later
    copies of a key are duplicate_key and do not count; an image on > 3 counted pairs, a text on
    > 2 counted images, and grams with 0 < df < T (frequent_threshold at K) are found in every
    shard holding them in a valid pair."""
    from curation.shard_passes import FACTS_SCHEMA, Fact, facts_path, value_id
    from curation.storage import write_parquet
    from curation.text import gram_id, unigrams_and_bigrams

    rng = random.Random(seed)
    words = [f"w{i}" for i in range(60)]
    facts_by_shard, out = {}, str(tmp_path / "out")
    seen_keys = []
    for shard in range(6):
        facts, rows = [], []
        for index in range(30):
            key = rng.choice(seen_keys) if seen_keys and rng.random() < 0.08 else f"k{shard}-{index}"
            seen_keys.append(key)
            tokens = [words[min(int(rng.paretovariate(1.0)) - 1, 59)] for _ in range(rng.randint(1, 6))]
            valid = rng.random() > 0.1
            text = rng.choice(["a cat", "a dog", "a bird", " ".join(tokens)])
            # "a bird" is only ever on two pictures: at the images-per-text limit, not over it
            sha = f"bird{rng.randint(0, 1)}" if text == "a bird" else f"sha{rng.randint(0, 40)}"
            facts.append(Fact(key, shard, index, valid, value_id(sha), value_id(text), " ".join(tokens)))
            rows.append({"key": key, "index": index, "sha256": sha, "text_key": text, "gram_text": " ".join(tokens),
                         "failures": "[]" if valid else '["decode_error"]'})
        facts_by_shard[shard] = facts
        write_parquet(facts_path(out, f"{shard:05d}.tar"), rows, FACTS_SCHEMA)
    k = 12
    config = load_config("align", [f"text.rare_tokens_top_k={k}", "image.max_texts_per_image=3",
                                   "text.max_images_per_text=2"])

    expected: dict = {}
    first: dict[str, tuple[int, int]] = {}
    for fact in sorted((f for fs in facts_by_shard.values() for f in fs), key=lambda f: (f.shard, f.index)):
        if fact.key in first:
            expected.setdefault((fact.shard, "duplicate_key"), []).append(fact.index)
        else:
            first[fact.key] = (fact.shard, fact.index)
    counted = [f for fs in facts_by_shard.values() for f in fs if f.valid and first[f.key] == (f.shard, f.index)]
    valid = [f for fs in facts_by_shard.values() for f in fs if f.valid]
    texts_per_image, images_per_text, df = Counter(f.image_id for f in counted), {}, Counter()
    for f in counted:
        images_per_text.setdefault(f.text_id, set()).add(f.image_id)
        df.update(unigrams_and_bigrams(f.gram_text.split(" ")))
    threshold = frequent_threshold(Counter(df.values()), k)
    for f in valid:
        if texts_per_image[f.image_id] > 3:
            expected.setdefault((f.shard, "image_too_many_texts"), set()).add(f.image_id.hex())
        if len(images_per_text.get(f.text_id, ())) > 2:
            expected.setdefault((f.shard, "text_too_common"), set()).add(f.text_id.hex())
        for g in unigrams_and_bigrams(f.gram_text.split(" ")):
            if 0 < df[g] < threshold:
                expected.setdefault((f.shard, "text_rare_tokens"), set()).add(gram_id(g))
    expected = {where: sorted(values, key=str) for where, values in expected.items()}
    reasons = {reason for _, reason in expected}
    assert 3 in texts_per_image.values() and 2 in map(len, images_per_text.values())  # both limits met exactly
    assert reasons == {"duplicate_key", "image_too_many_texts", "text_too_common", "text_rare_tokens"}
    for buckets in (1, 3, 4096):
        assert _corpus_findings(facts_by_shard, config, buckets, tmp_path) == (expected, threshold)


# ---- multi-index hashing: two hashes within the radius share a block ----------------------

@pytest.mark.parametrize("radius", [0, 1, 4, 8, 13])
def test_blocks_cover_64_bits_and_catch_every_pair_within_the_radius(radius):
    layout = blocks(radius)
    assert sum(w for _, w in layout) == 64 and len(layout) == radius + 1
    rng = random.Random(radius)
    for _ in range(300):
        a = rng.getrandbits(64)
        b = a
        for bit in rng.sample(range(64), rng.randint(0, radius)):
            b ^= 1 << bit
        assert any(((a >> s) & ((1 << w) - 1)) == ((b >> s) & ((1 << w) - 1)) for s, w in layout)


# ---- corpus de-duplication as joins == the union-find rule --------------------------------

def _run(transform, items, tmp_path):
    """``transform`` on a real (in-process) FnApiRunner; its output, read back from a file."""
    path = str(tmp_path / "out.jsonl")
    with beam.Pipeline(runner=FnApiRunner()) as p:
        _ = (p | beam.Create(items) | transform | beam.Map(json.dumps)
             | beam.combiners.ToList() | beam.Map(lambda lines: open(path, "w").write("\n".join(lines))))
    return [(shard, tuple(v)) for shard, v in (json.loads(line) for line in open(path).read().splitlines())]


def _corpus(seed: int, n_clusters: int = 40):
    """Clusters of pHashes: an original and copies a few bits away (some chained), exact copies."""
    rng = random.Random(seed)
    items, i = [], 0
    for c in range(n_clusters):
        base = rng.getrandbits(64)
        members = [base]
        for _ in range(rng.randint(0, 4)):
            value = rng.choice(members)
            for bit in rng.sample(range(64), rng.randint(0, 3)):
                value ^= 1 << bit
            members.append(value)
        for value in members:
            sha = f"sha-{value:x}" if rng.random() < 0.7 else f"sha-other-{i}"
            items.append((f"k{rng.getrandbits(32):08x}", i // 100, i % 100, sha, value))  # uint64, half >= 2^63
            i += 1
    return items


def _wire(items):
    return [(k, shard, index, sha, wire_phash(ph)) for k, shard, index, sha, ph in items]


@pytest.mark.parametrize("seed", range(3))
def test_near_duplicates_as_joins_equal_the_union_find_rule(seed, tmp_path):
    items = _corpus(seed)
    expected = duplicates_to_drop([(k, sha, ph) for k, _, _, sha, ph in items], "near", 4)
    found = _run(NearDuplicates(4, rounds=8), _wire(items), tmp_path)
    position = {(shard, index): key for key, shard, index, _, _ in items}
    got = {position[(shard, index)]: (kept, dist, kind) for shard, (index, kept, dist, kind) in found}
    assert got == expected and len(found) == len(got)


def test_a_chain_longer_than_the_rounds_is_still_dropped_after_a_smaller_key(tmp_path):
    (tmp_path / "4").mkdir()
    # a - b - c - d - e, each one bit from the next; with one round only neighbours are seen
    chain, value = [], 0
    for i, key in enumerate("abcde"):
        chain.append((key, 0, i, f"sha{i}", value))
        value ^= 1 << (i * 5)
    found = {index: kept for _, (index, kept, _, _) in _run(NearDuplicates(1, rounds=1), chain, tmp_path)}
    assert found == {1: "a", 2: "b", 3: "c", 4: "d"}      # each names its smaller neighbour
    found = {index: kept for _, (index, kept, _, _) in _run(NearDuplicates(1, rounds=4), chain, tmp_path / "4")}
    assert found == {1: "a", 2: "a", 3: "a", 4: "a"}      # 4 rounds reach across the chain


def test_exact_duplicates_as_joins_equal_the_rule(tmp_path):
    items = _corpus(7)
    expected = duplicates_to_drop([(k, sha, ph) for k, _, _, sha, ph in items], "exact")
    found = _run(ExactDuplicates(), _wire(items), tmp_path)
    position = {(shard, index): key for key, shard, index, _, _ in items}
    assert {position[(s, i)]: (kept, dist, kind) for s, (i, kept, dist, kind) in found} == expected


# ---- a raw shard that changes or disappears between the passes ----------------------------

def _raw_shard(path, n=3):
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            buffer = io.BytesIO()
            Image.new("RGB", (300, 300), (40 * i, 90, 200)).save(buffer, "JPEG")
            for ext, data in (("jpg", buffer.getvalue()), ("txt", f"a blue square number {i}".encode())):
                info = tarfile.TarInfo(f"s{i}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("change", ["gone", "other samples", "truncated"])
def test_a_raw_shard_changed_after_examining_fails_naming_it(tmp_path, change):
    config = load_config("lit-relaxed", ["language.enabled=false"])
    raw = tmp_path / "00000.tar"
    _raw_shard(raw)
    out = str(tmp_path / "out")
    facts = examine_shard(0, str(raw), out, config)
    assert [f.key for f in facts] == ["s0", "s1", "s2"] and all(f.valid for f in facts)
    decided = decide_shard(str(raw), out, [], None, config)
    assert [r["status"] for r in decided] == ["kept"] * 3
    if change == "gone":
        raw.unlink()
    elif change == "other samples":
        _raw_shard(raw, 2)
        with tarfile.open(raw, "a") as tar:  # a third sample under another key, where s2.jpg was
            info = tarfile.TarInfo("x9.txt")
            info.size = 20_000                 # long enough that s2's old offset reads whole
            tar.addfile(info, io.BytesIO(b"x" * info.size))
    else:
        raw.write_bytes(raw.read_bytes()[:1500])
    with pytest.raises(RawShardChanged, match=str(raw)):
        write_shard_outputs(str(raw), out, decided, config)
    assert not (tmp_path / "out" / "shards").exists() or not list((tmp_path / "out" / "shards").glob("*.tar"))


def test_kept_images_are_read_at_their_offsets_and_the_stream_is_the_fallback(tmp_path, monkeypatch):
    """The write pass reads each kept image at the offset examining recorded (no stream over
    the tar); when the tar was rewritten so that the offsets moved (here: a pax header before
    every member) but every position still holds its key, it falls back to the stream and
    gets the same bytes."""
    import curation.shard_passes as passes

    config = load_config("lit-relaxed", ["language.enabled=false"])
    raw = tmp_path / "00000.tar"
    _raw_shard(raw, 4)
    out = str(tmp_path / "out")
    examine_shard(0, str(raw), out, config)
    decided = decide_shard(str(raw), out, [], None, config)
    assert all(r["image_offset"] is not None for r in decided)
    streamed = passes._images_by_index(str(raw), {r["index"]: r["key"] for r in decided})
    with tarfile.open(raw) as tar:
        assert streamed == {i: tar.extractfile(f"s{i}.jpg").read() for i in range(4)}
    stream_reads = []
    real_stream = passes._images_by_index
    monkeypatch.setattr(passes, "_images_by_index", lambda *a: stream_reads.append(a) or real_stream(*a))
    assert passes._images_of(str(raw), decided) == streamed and not stream_reads

    with tarfile.open(raw) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(raw, "w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in members:
            member.pax_headers = {"comment": "moved"}
            tar.addfile(member, io.BytesIO(data))
    assert passes._images_of(str(raw), decided) == streamed and len(stream_reads) == 1
    assert write_shard_outputs(str(raw), out, decided, config)["kept"] == 4


# ---- statistics count valid first copies: a duplicate key's later copy is taken out again ----

def _tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, image, caption in samples:
            for ext, data in (("jpg", image), ("txt", caption.encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _jpeg(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (300, 300), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def test_a_later_copy_of_a_key_does_not_count_toward_the_image_limit(tmp_path):
    from curation.curate import curate
    import pandas as pd

    shared, other = _jpeg((200, 30, 30)), _jpeg((30, 30, 200))
    raw = tmp_path / "raw"
    raw.mkdir()
    # the shared image is in 3 valid first copies (a, b, c) and in c's later copy in the next shard
    _tar(raw / "00000.tar", [("a", shared, "one red square here"), ("b", shared, "two red squares there"),
                             ("c", shared, "three red squares"), ("d", other, "a blue square too")])
    _tar(raw / "00001.tar", [("c", shared, "the later copy of c"), ("e", other, "another blue square")])
    rules = ["text.rare_tokens_enabled=false", "language.enabled=false", "image.max_texts_per_image=3"]
    manifest = curate(raw, tmp_path / "out", load_config("align", rules), workers=2)
    rejected = pd.read_parquet(tmp_path / "out" / "rejected")
    assert dict(zip(rejected["key"], rejected["reason"])) == {"c": "duplicate_key"}   # 3 is not > 3
    assert manifest["valid_pairs"] == 5 and manifest["kept"] == 5
    manifest = curate(raw, tmp_path / "out2", load_config("align", rules[:2] + ["image.max_texts_per_image=2"]),
                      workers=2)
    rejected = pd.read_parquet(tmp_path / "out2" / "rejected")
    reasons = dict(zip(rejected["source_shard"] + "/" + rejected["key"], rejected["reason"]))
    assert reasons == {"00000/a": "image_too_many_texts", "00000/b": "image_too_many_texts",
                       "00000/c": "image_too_many_texts", "00001/c": "duplicate_key"}
    assert "image has 3 alt-texts > 2" in set(rejected["detail"])


# ---- the local runner: one process for a small corpus; two malloc arenas -----------------

def test_local_runner_is_one_process_for_a_small_corpus_or_a_single_shard():
    from curation.pipeline import IN_PROCESS_MAX_BYTES, LocalRun, local_run

    limit = IN_PROCESS_MAX_BYTES
    assert local_run(limit, 10, None, cores=4) == LocalRun("in_memory", 1)
    assert local_run(limit + 1, 10, None, cores=4) == LocalRun("multi_processing", 4)
    assert local_run(limit + 1, 3, None, cores=4) == LocalRun("multi_processing", 3)  # work is spread by raw shard
    assert local_run(50 * limit, 1, None, cores=4) == LocalRun("in_memory", 1)        # one shard: one worker anyway
    assert local_run(50 * limit, 10, None, cores=1) == LocalRun("in_memory", 1)
    assert local_run(None, 10, None, cores=4) == LocalRun("multi_processing", 4)        # sizes unknown: as if large
    assert local_run(1, 1, 2, cores=4) == LocalRun("multi_processing", 2)               # asked for: as asked
    assert local_run(1, 1, 2).describe() == "2 worker processes"


def test_local_runner_asks_for_two_malloc_arenas_unless_the_user_chose(monkeypatch):
    from curation.pipeline import LocalRun, pipeline_options

    two = LocalRun("multi_processing", 2)

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    pipeline_options(two)
    assert os.environ["MALLOC_ARENA_MAX"] == "2"          # the worker processes inherit it
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    pipeline_options(two)
    assert os.environ["MALLOC_ARENA_MAX"] == "4"
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    pipeline_options(two, ["--runner=DataflowRunner"])      # another runner: its workers are not ours
    assert "MALLOC_ARENA_MAX" not in os.environ
