"""``litflow dedup flag`` end to end: eval index, curated shards, training's embedding cache, the
real locked tower, verification; the flags it writes are what training excludes."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from curation.shards import write_shard
from dedup.evalsets import EvalSet, ImageFolder, Split
from dedup.index import build_index
from dedup.verify import VerifyRules
from flows.cli import main as litflow
from infra.contract import MATCH_FIELDS, MATCH_SCHEMA, NO_DISTANCE, empty_pair
from tests.images import on_white, photo, shard_bytes
from training.embed_cache import embed_shards
from training.eval_flags import flag_corpus
from training.exclusions import load_exclusions
from training.image_towers import build_image_tower

TOWER = "efficientnet-lite0"
BUGS = "openclipart/png/animals/bugs"


def _crop(image: Image.Image, keep: float) -> Image.Image:
    w, h = image.size
    dx, dy = round(w * (1 - keep) / 2), round(h * (1 - keep) / 2)
    return image.crop((dx, dy, w - dx, h - dy))


@pytest.fixture(scope="module")
def setup(demo_data, tmp_path_factory):
    """An eval set of 5 real images; a corpus of 8 pairs in 2 shards, 2 of them edited eval images."""
    root = tmp_path_factory.mktemp("flags")
    cache = demo_data.cache
    evals = {
        "photos/chelsea.png": photo("chelsea"),
        "photos/coffee.png": photo("coffee"),
        "bugs/ladybug_01.png": on_white(Image.open(cache / BUGS / "ladybug_01.png")),
        "bugs/farfalla_butterfly_fra1.png": on_white(Image.open(cache / BUGS / "farfalla_butterfly_fra1.png")),
        "bugs/spider.png": on_white(Image.open(cache / BUGS / "spider.png")),
    }
    for key, image in evals.items():
        (root / "eval" / key).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / "eval" / key)
    build_index([EvalSet("probe", (Split("test", ImageFolder(str(root / "eval"))),))], root / "index")
    # the duplicates, and what each duplicates
    copies = {"c-crop": (_crop(evals["photos/chelsea.png"], 0.8), "photos/chelsea.png"),
              "c-mirror": (ImageOps.mirror(evals["bugs/farfalla_butterfly_fra1.png"]), "bugs/farfalla_butterfly_fra1.png")}
    distinct = {
        "d-astronaut": photo("astronaut"), "d-rocket": photo("rocket"),
        "d-wasp": on_white(Image.open(cache / BUGS / "flying_wasp_gerald_g._02.png")),
        "d-snail": on_white(Image.open(cache / BUGS / "lumaca_turbo_architetto__01.png")),
        "d-mantis": on_white(Image.open(cache / BUGS / "mantide_religiosa_archit_01.png")),
        "d-fox": on_white(Image.open(cache / "emoji/img/google/64/1f98a.png")),
    }
    images = {key: image for key, (image, _) in copies.items()} | distinct
    samples = [(empty_pair(key=key, caption=f"a picture called {key}", status="kept"), shard_bytes(image))
               for key, image in sorted(images.items())]
    shards = [write_shard(root / "corpus" / "shards", "00000", samples[:4]),
              write_shard(root / "corpus" / "shards", "00001", samples[4:])]
    embed_shards(build_image_tower(TOWER), shards, root / "cache")
    return root, {key: eval_key for key, (_, eval_key) in copies.items()}, sorted(distinct), len(evals)


def test_flag_corpus_flags_the_edited_copies(setup):
    root, copies, distinct, n_eval = setup
    # top_k = every eval image, any cosine: every (corpus pair, eval image) is a candidate, so
    # verification alone decides
    summary = flag_corpus(root / "corpus", root / "cache", root / "index", root / "out", image_tower=TOWER,
                          top_k=n_eval, min_cosine=-1.0)
    flags = pd.read_parquet(root / "out" / "eval_flags.parquet")
    assert dict(zip(flags["key"], flags["eval_key"])) == copies
    for name in ("eval_flags.parquet", "eval_candidates.parquet"):  # the one eval-match schema, first
        schema = pq.read_schema(root / "out" / name)
        assert [schema.field(n) for n in MATCH_FIELDS] == list(MATCH_SCHEMA)
    assert set(flags["signal"]) == {"embedding"} and set(flags["distance"]) == {NO_DISTANCE}
    assert len(flags) == len(copies) and flags["confirmed"].all() and not flags["undecided"].any()
    assert set(flags["eval_set"]) == {"probe"} and set(flags["eval_split"]) == {"test"}
    assert flags.set_index("key").loc["c-mirror", "mirrored"] and not flags.set_index("key").loc["c-crop", "mirrored"]
    assert flags["shard"].str.endswith("shards/00000.tar").all()  # keys sorted: both copies in the first shard

    candidates = pd.read_parquet(root / "out" / "eval_candidates.parquet")
    corpus_keys = sorted(copies) + distinct
    assert len(candidates) == len(corpus_keys) * n_eval  # every pair
    assert sorted(set(candidates["key"])) == sorted(corpus_keys)
    assert candidates.groupby("key")["eval_key"].nunique().eq(n_eval).all()
    assert candidates["verification"].str.match(r"(not )?confirmed: \d+ inliers").all()
    confirmed = candidates[candidates["confirmed"]]
    assert sorted(zip(confirmed["key"], confirmed["eval_key"])) == sorted(copies.items())
    assert candidates["flagged"].equals(candidates["confirmed"] | candidates["undecided"])
    assert not candidates.loc[candidates["key"].isin(distinct), "flagged"].any()

    written = json.loads((root / "out" / "flags.json").read_text())
    assert written == summary
    assert summary["eval_images"] == n_eval and summary["shards"] == 2
    assert summary["candidates"] == len(corpus_keys)
    assert summary["flagged"] == summary["confirmed"] + summary["undecided"] == len(copies)
    assert summary["verify"] == VerifyRules().to_dict()
    assert (summary["top_k"], summary["min_cosine"], summary["image_tower"]) == (n_eval, -1.0, TOWER)

    # training excludes exactly the flagged keys
    assert load_exclusions([root / "out" / "eval_flags.parquet"]) == frozenset(copies)


def test_default_settings_still_propose_the_copies(setup):
    """With the defaults (3 nearest, cosine >= 0.5) the tower's candidates include the copies."""
    root, copies, distinct, _ = setup
    summary = flag_corpus(root / "corpus", root / "cache", root / "index", root / "defaults", image_tower=TOWER)
    candidates = pd.read_parquet(root / "defaults" / "eval_candidates.parquet")
    assert (candidates["rank"] < 3).all() and (candidates["cosine"] >= 0.5).all()
    assert candidates.groupby("key").size().max() <= 3
    flags = pd.read_parquet(root / "defaults" / "eval_flags.parquet")
    assert dict(zip(flags["key"], flags["eval_key"])) == copies
    assert summary["flagged"] == len(copies)


def test_flag_command_line(setup, tmp_path, capsys):
    root, copies, _, n_eval = setup
    out = tmp_path / "cli"
    code = litflow(["dedup", "flag", str(root / "corpus"), str(out), "--cache", str(root / "cache"),
                    "--index", str(root / "index"), "--image-tower", TOWER, "--top-k", str(n_eval),
                    "--min-cosine=-1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    printed = json.loads(captured.out[captured.out.index("{"):])
    assert printed == json.loads((out / "flags.json").read_text())
    assert printed["flagged"] == len(copies) and printed["flags"] == str(out / "eval_flags.parquet")
    flags = pd.read_parquet(out / "eval_flags.parquet")
    assert dict(zip(flags["key"], flags["eval_key"])) == copies
    assert load_exclusions([out / "eval_flags.parquet"]) == frozenset(copies)
