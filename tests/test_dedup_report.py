"""Audit report: matches, per-set counts, intra-corpus groups, settings mismatch, real chromium."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageEnhance

from curation.eval_audit import audit_corpus
from curation.shards import write_shard
from dedup.evalsets import EvalSet, ImageFolder, Split
from dedup.index import build_index
from dedup.phash import HashSettings, HashSettingsMismatch, hash_image_bytes
from dedup.verify import VerifyRules
from infra.contract import MATCH_FIELDS, MATCH_SCHEMA, empty_pair
from tests.demo_shards import write_corpus_json

RADIUS = 8


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _on_white(path: Path) -> Image.Image:
    image = Image.open(path).convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB").resize((128, 128))


@pytest.fixture(scope="module")
def setup(demo_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    emoji = sorted((demo_data.cache / "emoji/img/google/64").glob("1f4*.png"))
    clip = [p for p in sorted((demo_data.cache / "openclipart/png/animals").rglob("*.png")) if p.stat().st_size < 100_000]
    train, test = root / "eval" / "train", root / "eval" / "test"
    for folder, paths in ((train, emoji[:30]), (test, emoji[30:60])):
        for p in paths:
            (folder / "c").mkdir(parents=True, exist_ok=True)
            _on_white(p).save(folder / "c" / p.name)
    evalset = EvalSet("emo", (Split("train", ImageFolder(str(train)), "train"), Split("test", ImageFolder(str(test)), "test")))
    build_index([evalset], root / "index")
    # corpus: copies (JPEG, brighter) of 10 train + 10 test eval images, 25 unrelated clipart,
    # and an exact + near duplicate inside the corpus
    images = [_jpeg(_on_white(p)) for p in emoji[:10] + emoji[30:40]]
    images += [_jpeg(ImageEnhance.Brightness(_on_white(p)).enhance(1.2)) for p in emoji[10:12]]
    images += [_jpeg(Image.open(p).convert("RGB").resize((160, 120))) for p in clip[:25]]
    images += [images[-1], _jpeg(Image.open(clip[0]).convert("RGB").resize((160, 120)), quality=40)]
    samples = []
    for i, data in enumerate(images):
        ph, _ = hash_image_bytes(data)
        samples.append((empty_pair(key=f"{i:05d}", caption=f"caption <{i}>", phash=ph, status="kept"), data))
    corpus = root / "corpus"
    write_shard(corpus, "00000", samples[:20])
    write_shard(corpus, "00001", samples[20:])
    write_corpus_json(corpus)
    return root, images


@pytest.fixture(scope="module")
def sources(demo_data) -> dict[str, tuple[str, str]]:
    """Ground truth: corpus key -> (split, eval key) of the eval image it is a copy of."""
    emoji = sorted((demo_data.cache / "emoji/img/google/64").glob("1f4*.png"))
    made_from = [("train", p) for p in emoji[:10]] + [("test", p) for p in emoji[30:40]] + \
                [("train", p) for p in emoji[10:12]]  # JPEG copies, then the brighter ones
    return {f"{i:05d}": (split, f"c/{p.name}") for i, (split, p) in enumerate(made_from)}


def _expected(root: Path, images: list[bytes], mode: str) -> tuple[int, int, int]:
    """From the rule: a corpus image matches an eval image whose hash or mirror is within RADIUS.

    Returns (corpus images matched, corpus images removed under mode, (corpus, eval) pairs).
    """
    index = pd.concat([pd.read_parquet(p).assign(split=p.stem.split("__")[1]) for p in (root / "index/splits").glob("*.parquet")])
    matched = removed = pairs = 0
    for data in images:
        h = np.uint64(hash_image_bytes(data)[0])
        d = np.minimum(np.bitwise_count(index["phash"].to_numpy(np.uint64) ^ h),
                       np.bitwise_count(index["mirror"].to_numpy(np.uint64) ^ h))
        near = d <= RADIUS
        matched += bool(near.any())
        pairs += int(near.sum())
        removed += bool((near & (index["split"].to_numpy() == "test")).any()) if mode == "test" else bool(near.any())
    return matched, removed, pairs


def test_report_counts_follow_the_rule(setup, sources, tmp_path):
    root, images = setup
    summary = audit_corpus(root / "corpus", root / "index", tmp_path / "r", radius=RADIUS, mode="test")
    matched, removed, pairs = _expected(root, images, "test")
    assert matched >= 22 and removed < matched  # the copies are found; train copies not removed in test mode
    assert summary["corpus"]["pairs"] == len(images)
    assert summary["corpus"]["candidates"] == matched  # what pHash proposes
    # what is removed: the copies of test images (verification confirms them, and only them)
    assert summary["corpus"]["removed"] == sum(1 for split, _ in sources.values() if split == "test") <= removed
    assert summary["corpus"]["matched"] == len(sources)
    assert not summary["corpus"]["hashed_here"]  # stored phashes used, settings checked
    splits = json.loads((tmp_path / "r/report.json").read_text())["eval_sets"]["emo"]
    assert splits["train"]["eval_images"] == 30 and splits["train"]["removed"] == 0
    frame = pd.read_parquet(tmp_path / "r/matches.parquet")
    assert len(frame) == pairs
    schema = pq.read_schema(tmp_path / "r/matches.parquet")  # the one eval-match schema, first
    assert [schema.field(n) for n in MATCH_FIELDS] == list(MATCH_SCHEMA)
    assert frame["distance"].max() <= RADIUS and frame["distance"].is_monotonic_increasing
    assert set(frame.loc[frame["removed"], "eval_split"]) == {"test"}
    # intra-corpus: the exact copy and the q40 re-encode group with their originals
    groups = pd.read_parquet(tmp_path / "r/corpus_duplicates.parquet")
    assert summary["corpus_duplicates"]["exact_groups"] >= 1
    exact = groups[groups["kind"] == "exact"]
    assert {f"{len(images) - 3:05d}", f"{len(images) - 2:05d}"} <= set(exact["key"])


def test_verification_keeps_candidates_but_removes_only_confirmed(setup, sources, tmp_path):
    """pHash proposes; verification confirms the copies (JPEG, brighter) and rejects the rest,
    which stay in matches.parquet and on the page, marked, and are not removed."""
    root, images = setup
    summary = audit_corpus(root / "corpus", root / "index", tmp_path / "r", radius=RADIUS, mode="train+test")
    frame = pd.read_parquet(tmp_path / "r/matches.parquet")
    matched, _, pairs = _expected(root, images, "train+test")
    assert len(frame) == pairs and summary["corpus"]["candidates"] == matched
    assert frame["flagged"].equals(frame["confirmed"] | frame["undecided"])
    assert frame["removed"].equals(frame["flagged"])  # train+test: every split counts
    # ground truth: a candidate is confirmed exactly when it is the copy's own eval image
    own = [sources.get(k) == (s, e) for k, s, e in zip(frame["key"], frame["eval_split"], frame["eval_key"])]
    assert frame["confirmed"].tolist() == own
    assert set(frame.loc[frame["removed"], "key"]) == set(sources)  # every copy, the edited ones too
    assert {"00020", "00021"} <= set(frame.loc[frame["confirmed"], "key"])  # brightness x1.2
    rejected = frame[~frame["confirmed"]]
    assert len(rejected) >= 1  # pHash proposed other eval images too (else nothing is tested here)
    assert not rejected["flagged"].any() and not rejected["removed"].any()
    assert rejected["verification"].str.startswith("not confirmed: ").all()
    assert frame.loc[frame["confirmed"], "verification"].str.startswith("confirmed: ").all()
    # report.json: candidates / matched (flagged) / removed, per split too, and the rules
    assert summary["corpus"]["matched"] == summary["corpus"]["removed"] == len(sources)
    assert summary["verify"] == VerifyRules().to_dict()
    written = json.loads((tmp_path / "r/report.json").read_text())
    assert written["corpus"] == summary["corpus"]
    for split in ("train", "test"):
        info = written["eval_sets"]["emo"][split]
        sel = frame[frame["eval_split"] == split]
        assert info["corpus_pairs_candidates"] == sel["key"].nunique()
        assert info["corpus_pairs_matched"] == info["removed"] == sel.loc[sel["flagged"], "key"].nunique()
        assert info["removed"] == sum(1 for s, _ in sources.values() if s == split)
    # report.html: the unconfirmed candidates are on the page, marked
    html = (tmp_path / "r/report.html").read_text()
    assert html.count("class='match'") == len(frame)
    assert html.count("data-flagged='0'") == html.count("(candidate, not confirmed)") == len(rejected)
    assert html.count("not confirmed: ") == len(rejected)

    # --no-verify: every pHash candidate counts, as before verification
    plain = audit_corpus(root / "corpus", root / "index", tmp_path / "plain", radius=RADIUS, verify=False)
    unverified = pd.read_parquet(tmp_path / "plain/matches.parquet")
    assert unverified["flagged"].all() and unverified["removed"].all() and plain["verify"] is None
    assert (unverified["verification"] == "not verified").all()
    assert plain["corpus"]["matched"] == plain["corpus"]["removed"] == plain["corpus"]["candidates"] == matched


def test_embedding_candidates_join_the_report(setup, sources, tmp_path):
    """Candidates from `litflow dedup flag` (eval_candidates.parquet) come in with their verdicts."""
    root, _ = setup
    clip_a, clip_b = f"{22:05d}", f"{23:05d}"  # two clip-art pairs that pHash matches to nothing
    audit_corpus(root / "corpus", root / "index", tmp_path / "p", radius=RADIUS)
    plain = pd.read_parquet(tmp_path / "p/matches.parquet")
    assert not {clip_a, clip_b} & set(plain["key"])
    split, eval_key = sources["00000"]
    test_key = sources["00010"][1]
    embedding = pd.DataFrame({
        "key": ["00000", clip_a, clip_b, "not-in-corpus"], "eval_set": ["emo"] * 4,
        "eval_split": [split, "test", "test", "test"], "eval_key": [eval_key, test_key, test_key, test_key],
        "cosine": [0.97, 0.61, 0.55, 0.9], "rank": [0, 0, 0, 0],
        "confirmed": [True, False, False, True], "undecided": [False, False, True, False],
        "verification": ["confirmed: 40 inliers", "not confirmed: 0 inliers", "corpus image unreadable", "x"],
        "flagged": [True, False, True, True], "shard": ["s"] * 4})
    summary = audit_corpus(root / "corpus", root / "index", tmp_path / "r", radius=RADIUS, embedding_matches=embedding)
    frame = pd.read_parquet(tmp_path / "r/matches.parquet")
    assert len(frame) == len(plain) + 2  # the pHash pair both found is one row; the unknown key is dropped

    def row(key, eval_key):
        (found,) = frame[(frame["key"] == key) & (frame["eval_key"] == eval_key)].itertuples()
        return found

    both = row("00000", eval_key)
    assert both.signal == "phash+embedding" and both.cosine == pytest.approx(0.97) and both.removed
    # the pair was verified with the pHash match; that verdict is kept
    assert both.verification.startswith("confirmed: ") and both.verification != "confirmed: 40 inliers"
    only = row(clip_a, test_key)
    assert (only.signal, only.distance, only.flagged, only.removed) == ("embedding", -1, False, False)
    assert only.verification == "not confirmed: 0 inliers" and only.eval_ref.endswith(test_key.split("/")[1])
    undecided = row(clip_b, test_key)
    assert undecided.flagged and undecided.removed and undecided.undecided
    assert summary["corpus"]["candidates"] == plain["key"].nunique() + 2
    assert summary["corpus"]["removed"] == len(sources) + 1  # clip_b: undecided counts as flagged


def test_settings_mismatch_is_refused(setup, tmp_path):
    root, _ = setup
    corpus = tmp_path / "corpus"
    shutil.copytree(root / "corpus", corpus)
    write_corpus_json(corpus, HashSettings(jpeg_draft=None))
    with pytest.raises(HashSettingsMismatch, match="jpeg_draft"):
        audit_corpus(corpus, root / "index", tmp_path / "r")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (infra/install.sh installs it)")
def test_report_html_in_headless_chromium(setup, tmp_path):
    root, images = setup
    page_size = 7
    summary = audit_corpus(root / "corpus", root / "index", tmp_path / "r", radius=RADIUS, page_size=page_size)
    html = (tmp_path / "r/report.html").read_text()
    assert "http://" not in html and "https://" not in html  # self-contained
    n = len(pd.read_parquet(tmp_path / "r/matches.parquet"))
    assert n == _expected(root, images, "train+test")[2] and summary["corpus"]["removed"] == summary["corpus"]["matched"]
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = (tmp_path / "r/report.html").as_uri()
    dom = subprocess.run([_chromium(), *flags, "--virtual-time-budget=3000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120).stdout
    assert 'data-ready="1"' in dom  # the page's script ran
    assert re.search(r"<span id=\"match-count\">(\d+)</span>", dom).group(1) == str(n)
    assert dom.count('class="match"') == n
    assert dom.count('data-visible="1"') == min(page_size, n)
    assert f"page 1 of {-(-n // page_size)}" in dom
    shot = tmp_path / "shot.png"  # kept where a person can look: pytest's tmp folder
    subprocess.run([_chromium(), *flags, "--window-size=1280,1600", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120)
    image = Image.open(shot)
    assert image.size == (1280, 1600)
    # thumbnails were drawn: the screenshot is not a blank page
    assert np.asarray(image.convert("L")).std() > 20
