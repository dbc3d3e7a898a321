"""The real Beam pipeline (FnApiRunner, 2 worker processes) on real and hostile raw shards."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pandas as pd
import pytest
from PIL import Image

from curation.config import load_config
from curation.curate import curate
from curation.demo import ingest_demo
from curation.ingest import IngestConfig
from curation.shards import list_shards, read_shard
from dedup.phash import DEFAULT_SETTINGS, hash_image_bytes
from tests.conftest import REAL_BOMB

EMOJI = "emoji/img/google/64"


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def write_raw_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


class HostileCorpus:
    """Raw shards whose every sample's fate follows from a rule; ``expect[key]`` says which."""

    def __init__(self, demo, root):
        self.expect: dict[str, str] = {}
        self.captions: dict[str, str] = {}
        emoji = sorted((demo.cache / EMOJI).glob("1f3*.png"))
        self._emoji = iter(emoji)
        shard_a, shard_b = [], []

        def add(members, key, image_bytes, caption, expect, meta=None):
            if image_bytes is not None:
                members.append((f"{key}.jpg", image_bytes))
            if caption is not None:
                members.append((f"{key}.txt", caption if isinstance(caption, bytes) else caption.encode()))
            if meta is not None:
                members.append((f"{key}.json", json.dumps(meta).encode()))
            self.expect[key] = expect

        def picture(size):  # a distinct real image at an exact size
            return Image.open(next(self._emoji)).convert("RGB").resize(size)

        ok = "a small real picture of something"
        # image filters at their boundaries (size of the image itself: no metadata)
        add(shard_a, "size200", jpeg(picture((200, 300))), ok, "too_small")
        add(shard_a, "size201", jpeg(picture((201, 300))), ok, "kept")
        add(shard_a, "aspect3", jpeg(picture((201, 603))), ok, "aspect_ratio")
        add(shard_a, "aspect2995", jpeg(picture((201, 602))), ok, "kept")
        # the ORIGINAL size decides, not the resized one in the shard
        add(shard_a, "resized", jpeg(picture((256, 150))), ok, "kept",
            meta={"original_width": 1707, "original_height": 1000})
        add(shard_a, "orig_small", jpeg(picture((256, 256))), ok, "too_small",
            meta={"original_width": 150, "original_height": 150})
        # unigram counts at their boundaries (ALIGN: 3 to 20)
        add(shard_a, "words2", jpeg(picture((300, 300))), "two words", "text_too_short")
        add(shard_a, "words3", jpeg(picture((300, 300))), "exactly three words", "kept")
        add(shard_a, "words20", jpeg(picture((300, 300))), " ".join(f"w{i}" for i in range(20)), "kept")
        add(shard_a, "words21", jpeg(picture((300, 300))), " ".join(f"w{i}" for i in range(21)), "text_too_many_words")
        # alt-text shared by exactly 10 images is kept, by 11 images dropped
        for i in range(10):
            add(shard_a, f"shared10_{i}", jpeg(picture((300, 300))), "an alt text shared ten times", "kept")
        for i in range(11):
            add(shard_b, f"shared11_{i}", jpeg(picture((300, 300))), "an alt text shared eleven times", "text_too_common")
        # one image content with 3 alt-texts is kept, another with 4 dropped (limit set to 3)
        three, four = jpeg(picture((300, 300))), jpeg(picture((300, 300)))
        for i in range(3):
            add(shard_a, f"img3_{i}", three, f"caption number {i} of three", "kept")
        for i in range(4):
            add(shard_b, f"img4_{i}", four, f"caption number {i} of four", "image_too_many_texts")
        # hostile samples
        good = jpeg(picture((300, 300)))
        add(shard_a, "no_text", good, None, "missing_text")
        add(shard_a, "no_image", None, ok, "missing_image")
        add(shard_a, "empty_caption", jpeg(picture((300, 300))), "   ", "text_empty")
        add(shard_a, "nul_caption", jpeg(picture((300, 300))), b"bad\x00caption here", "text_invalid")
        add(shard_a, "latin1_caption", jpeg(picture((300, 300))), b"caf\xe9 au lait ici", "text_invalid")
        add(shard_a, "huge_caption", jpeg(picture((300, 300))), ("word " * 200_000), "text_too_many_words")
        truncated = jpeg(picture((300, 300)))
        add(shard_a, "truncated", truncated[: len(truncated) // 2], ok, "decode_error")
        add(shard_a, "not_image", b"<html>nope</html>", ok, "decode_error")
        add(shard_a, "bomb", (demo.cache / REAL_BOMB).read_bytes(), ok, "image_too_large")
        add(shard_a, "dupkey", jpeg(picture((300, 300))), "the first copy of a key", "kept")
        add(shard_b, "dupkey", jpeg(picture((300, 300))), "the second copy of a key", "duplicate_key")
        # odd modes: converted and kept
        base = picture((300, 300))
        add(shard_b, "cmyk", jpeg_cmyk(base), ok, "kept")
        add(shard_b, "gray16", png(Image.fromarray((__import__("numpy").asarray(base.convert("L"), dtype="uint16") * 257))), ok, "kept")
        add(shard_b, "palette_alpha", png(picture((300, 300)).convert("RGBA").convert("P")), ok, "kept")
        frames = [picture((300, 300)).convert("P") for _ in range(2)]
        gif = io.BytesIO()
        frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
        add(shard_b, "animated", gif.getvalue(), ok, "kept")
        self.first_frame = frames[0]
        write_raw_tar(root / "00000.tar", shard_a)
        write_raw_tar(root / "00001.tar", shard_b)
        # a third shard cut off in the middle of its second sample's image
        # (`ok` is already on exactly 10 valid images: one more would make it too common)
        broken = [("whole.jpg", jpeg(picture((300, 300)))), ("whole.txt", b"the sample before the break"),
                  ("cut.jpg", jpeg(picture((300, 300)))), ("cut.txt", b"the sample cut in half")]
        write_raw_tar(root / "00002.tar", broken)
        data = (root / "00002.tar").read_bytes()
        padded = [512 + -(-len(content) // 512) * 512 for _, content in broken]  # header + data blocks
        (root / "00002.tar").write_bytes(data[: padded[0] + padded[1] + 512 + len(broken[2][1]) // 2])
        self.expect["whole"] = "kept"
        self.expect["00002@1"] = "unreadable_shard"
        self.inputs = len(self.expect) + 1  # dupkey appears twice


def jpeg_cmyk(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("CMYK").save(buffer, "JPEG")
    return buffer.getvalue()


BOUNDARY_RULES = ["image.max_texts_per_image=3", "text.rare_tokens_enabled=false"]


@pytest.fixture(scope="module")
def hostile(demo_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("raw_hostile")
    corpus = HostileCorpus(demo_data, root)
    out = tmp_path_factory.mktemp("curated") / "out"
    manifest = curate(root, out, load_config("align", BOUNDARY_RULES), workers=2)
    return corpus, root, out, manifest


def kept_samples(out):
    samples = {}
    for shard in list_shards(out / "shards"):
        for sample in read_shard(shard):
            samples[sample["__key__"]] = sample
    return samples


def test_each_record_meets_its_rule(hostile):
    corpus, _, out, manifest = hostile
    rejected = pd.read_parquet(out / "rejected")
    # dupkey: the first copy (shard 00000) is kept, the second rejected
    dup = rejected[rejected["key"] == "dupkey"]
    assert dup["reason"].tolist() == ["duplicate_key"] and dup["source_shard"].tolist() == ["00001"]
    assert json.loads(kept_samples(out)["dupkey"]["json"])["caption"] == "the first copy of a key"
    got = dict(zip(rejected["key"], rejected["reason"]))
    kept = kept_samples(out)
    for key, expect in corpus.expect.items():
        if expect == "kept":
            assert key in kept, (key, got.get(key))
        elif key != "dupkey":
            assert got.get(key) == expect, (key, got.get(key))
            assert key not in kept


def test_accounting_adds_up(hostile):
    corpus, _, out, manifest = hostile
    assert manifest["inputs"] == corpus.inputs
    assert manifest["inputs"] == manifest["kept"] + sum(manifest["rejected"].values())
    # expect["dupkey"] names the second copy's fate; the first copy is kept
    expected = pd.Series([e for e in corpus.expect.values() if e != "kept"]).value_counts()
    assert manifest["rejected"] == expected.to_dict()
    stages = manifest["stages"]
    assert stages["read"]["in"] == corpus.inputs and stages["corpus_dedup"]["out"] == manifest["kept"]
    assert all(s["in"] - sum(s["rejected"].values()) == s["out"] for s in stages.values())


def test_manifest_records_every_rule_and_threshold(hostile):
    _, _, out, manifest = hostile
    config = manifest["config"]
    assert config["preset"] == "align"
    assert config["image"]["min_side"] == 200 and config["image"]["max_aspect"] == 3.0
    assert config["image"]["max_texts_per_image"] == 3  # the override is recorded
    assert config["text"]["min_words"] == 3 and config["text"]["max_words"] == 20
    assert config["text"]["max_images_per_text"] == 10 and config["text"]["rare_tokens_enabled"] is False
    assert manifest["versions"]["apache-beam"].startswith("2.77")
    assert json.loads((out / "corpus.json").read_text()) == json.loads(json.dumps(manifest, default=str))


def test_kept_samples_are_complete(hostile):
    corpus, _, out, _ = hostile
    kept = kept_samples(out)
    for key, sample in kept.items():
        meta = json.loads(sample["json"])
        image = Image.open(io.BytesIO(sample["jpg"]))
        assert image.format == "JPEG" and image.mode in ("RGB", "L")
        assert sample["txt"].decode() == meta["caption"]
        # hashed from the written bytes with the eval index's settings: a re-hash agrees exactly
        assert meta["phash"] == hash_image_bytes(sample["jpg"], DEFAULT_SETTINGS)[0]
        assert meta["status"] == "kept" and meta["lang"]
    # the animated GIF keeps its first frame
    first = Image.open(io.BytesIO(kept["animated"]["jpg"])).convert("RGB")
    reference = corpus.first_frame.convert("RGB")
    diff = sum(abs(a - b) for a, b in zip(first.resize((16, 16)).tobytes(), reference.resize((16, 16)).tobytes()))
    assert diff / (16 * 16 * 3) < 8  # same picture up to JPEG loss


@pytest.mark.parametrize("workers", [2, None], ids=["2 worker processes", "chosen: one process"])
def test_same_input_same_output(hostile, tmp_path, workers):
    """Again on 2 worker processes, and as the default chooses for a corpus this small (in one
    process): the same bytes as the first run (2 worker processes)."""
    corpus, root, out, manifest = hostile
    again = curate(root, tmp_path / "again", load_config("align", BOUNDARY_RULES), workers=workers)
    ran = json.loads((tmp_path / "again" / "timing.json").read_text())["ran"]
    assert ran == ("2 worker processes" if workers else "in one process")
    assert json.dumps(again, sort_keys=True, default=str) == json.dumps(manifest, sort_keys=True, default=str)
    for name in ("rejected/00000.parquet", "corpus.json"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()
    first = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "shards").iterdir()}
    second = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "again" / "shards").iterdir()}
    assert first == second


def test_rare_tokens_at_the_boundary(demo_data, tmp_path):
    """5 × 'a photo of a dog' + 1 × 'a photo of a cat': 8 grams have document frequency >= 5."""
    emoji = iter(sorted((demo_data.cache / EMOJI).glob("1f4*.png")))
    members = []
    captions = ["a photo of a dog"] * 5 + ["a photo of a cat"]
    for i, caption in enumerate(captions):
        members += [(f"s{i}.jpg", jpeg(Image.open(next(emoji)).resize((300, 300)))), (f"s{i}.txt", caption.encode())]
    (tmp_path / "raw").mkdir()
    write_raw_tar(tmp_path / "raw" / "00000.tar", members)
    for k, dogs_kept in ((8, True), (7, False)):
        manifest = curate(tmp_path / "raw", tmp_path / f"k{k}", load_config("align", [f"text.rare_tokens_top_k={k}"]), workers=2)
        assert manifest["rare_tokens_k"] == k
        rejected = pd.read_parquet(tmp_path / f"k{k}" / "rejected")
        reasons = dict(zip(rejected["key"], rejected["reason"]))
        assert reasons["s5"] == "text_rare_tokens"  # "cat" and "a cat" occur once
        assert all(("s%d" % i not in reasons) == dogs_kept for i in range(5))


def test_presets_differ_as_documented(hostile, tmp_path):
    corpus, root, _, _ = hostile
    manifest = curate(root, tmp_path / "relaxed", load_config("lit-relaxed", ["image.max_texts_per_image=3"]), workers=2)
    config = manifest["config"]
    assert config["preset"] == "lit-relaxed" and config["text"]["rare_tokens_enabled"] is False
    assert config["text"]["min_words"] == 1 and config["text"]["max_words"] == 64
    rejected = pd.read_parquet(tmp_path / "relaxed" / "rejected")
    reasons = dict(zip(rejected["key"], rejected["reason"]))
    assert "words2" not in reasons and "words21" not in reasons   # kept under lit-relaxed
    assert reasons["size200"] == "too_small" and reasons["shared11_0"] == "text_too_common"  # same image + common rules


def test_real_ingested_demo_shards(demo_data, tmp_path):
    """Real ingestion output (img2dataset) flows through curation with the counts adding up."""
    # 5 raw shards for 2 workers: the path that does not reshuffle samples
    ingest_report = ingest_demo(tmp_path / "ingest", per_source=25, config=IngestConfig(processes=2, samples_per_shard=10))
    manifest = curate(tmp_path / "ingest" / "shards", tmp_path / "curated", load_config("lit-relaxed"), workers=2)
    assert manifest["inputs"] == ingest_report["downloaded"]
    assert manifest["inputs"] == manifest["kept"] + sum(manifest["rejected"].values())
    # every emoji is 64 px: the ALIGN image rule (shorter side > 200) rejects all of them
    rejected = pd.read_parquet(tmp_path / "curated" / "rejected")
    catalogue = pd.read_parquet(tmp_path / "ingest" / "demo_urls.parquet")
    assert (rejected["reason"] == "too_small").sum() >= (catalogue["source"] == "emoji").sum() - ingest_report["failed"].get("image_too_large", 0)
    assert sum(manifest["languages"]["kept"].values()) == manifest["kept"]
