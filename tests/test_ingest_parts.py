"""A URL list in parts (a folder or a glob of parquet and csv files) through the real
img2dataset: read part by part, accounted per part and in total, resumed per part, and an
unreadable part failing clearly."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from curation.ingest import IngestConfig, ingest
from curation.url_list import UrlListError, iter_chunks, list_parts

from tests.conftest import HOSTILE_LIMITS

CONFIG = dict(processes=2, threads=8, samples_per_shard=4, **HOSTILE_LIMITS)


def _frame(rows):
    return pd.DataFrame({"url": [r.url for r in rows], "caption": [r.caption for r in rows],
                         "license": [f"lic-{r.caption}" for r in rows]})


@pytest.fixture(scope="module")
def parts(hostile_site, tmp_path_factory):
    """The hostile rows cut into three parts: parquet, csv, parquet (in name order)."""
    rows, _ = hostile_site
    root = tmp_path_factory.mktemp("url_parts")
    folder = root / "list"
    folder.mkdir()
    cuts = [rows[:7], rows[7:15], rows[15:]]
    _frame(cuts[0]).to_parquet(folder / "part-000.parquet", index=False)
    _frame(cuts[1]).to_csv(folder / "part-001.csv", index=False)
    _frame(cuts[2]).to_parquet(folder / "part-002.parquet", index=False)
    (folder / "_SUCCESS").write_text("")  # what Spark leaves beside its parts: not a part
    report = ingest(folder, root / "out", IngestConfig(**CONFIG))
    return root, folder, cuts, report


def test_parts_are_listed_from_a_folder_or_a_glob(parts):
    _, folder, _, _ = parts
    names = ["part-000.parquet", "part-001.csv", "part-002.parquet"]
    assert [p.name for p in list_parts(folder)] == names
    assert [p.name for p in list_parts(str(folder / "part-*"))] == names
    assert [p.name for p in list_parts(folder / "part-001.csv")] == ["part-001.csv"]
    with pytest.raises(UrlListError, match="no URL list part matches"):
        list_parts(str(folder / "nothing-*.parquet"))


def test_every_part_adds_up_and_so_does_the_total(parts):
    _, _, cuts, report = parts
    assert [p["rows_in"] for p in report["parts"]] == [len(c) for c in cuts]
    for part, rows in zip(report["parts"], cuts):
        expected = pd.Series([r.expect for r in rows if r.expect != "downloaded"]).value_counts().to_dict()
        assert part["downloaded"] == sum(r.expect == "downloaded" for r in rows)
        assert part["failed"] == expected
        assert part["rows_in"] == part["downloaded"] + sum(part["failed"].values())
    assert report["rows_in"] == sum(len(c) for c in cuts)
    assert report["downloaded"] == sum(p["downloaded"] for p in report["parts"])
    assert report["rows_in"] == report["downloaded"] + sum(report["failed"].values())


def test_each_row_ends_where_its_construction_says(parts):
    root, _, cuts, _ = parts
    out = root / "out"
    rejected = pd.read_parquet(out / "rejected.parquet")
    by_id = {(p, r): reason for p, r, reason in zip(rejected["part"], rejected["row"], rejected["reason"])}
    downloaded = {}
    for shard in sorted((out / "shards").glob("*.parquet")):
        frame = pd.read_parquet(shard)
        for p, r, key, status in zip(frame["part"], frame["row"], frame["key"], frame["status"]):
            if status == "success":
                downloaded[(int(p), int(r))] = key
    for number, rows in enumerate(cuts):
        for row, spec in enumerate(rows):
            if spec.expect == "downloaded":
                assert (number, row) in downloaded and (number, row) not in by_id, spec.url
            else:
                assert by_id.get((number, row)) == spec.expect, spec.url
    # keys are unique across parts (img2dataset numbers shards across the vetted parts)
    assert len(set(downloaded.values())) == len(downloaded)
    json_meta = json.loads((out / "ingest.json").read_text())
    assert json_meta["shards"] == sorted(p.name for p in (out / "shards").glob("*.tar"))


def test_rerun_resumes_per_part(parts, tmp_path):
    root, folder, _, report = parts
    out = root / "out"
    vetted = {p.name: p.stat().st_mtime_ns for p in (out / "vetted").glob("*.parquet")}
    tars = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")}
    # part 1 changes on disk (same rows, rewritten): only it is vetted again
    (folder / "part-001.csv").write_text((folder / "part-001.csv").read_text())
    again = ingest(folder, out, IngestConfig(**CONFIG))
    now = {p.name: p.stat().st_mtime_ns for p in (out / "vetted").glob("*.parquet")}
    assert {n for n in vetted if vetted[n] != now[n]} == {"00001-00000.parquet"}
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")} == tars  # no shard redone
    assert [{k: p[k] for k in ("rows_in", "downloaded", "failed")} for p in again["parts"]] == \
        [{k: p[k] for k in ("rows_in", "downloaded", "failed")} for p in report["parts"]]


@pytest.mark.parametrize("content, message", [
    (b"PAR1 this is not parquet", "not a readable parquet file"),
    (None, "missing column(s) 'caption'"),
])
def test_an_unreadable_part_fails_naming_it_and_leaves_no_report(hostile_site, tmp_path, content, message):
    rows, _ = hostile_site
    folder = tmp_path / "list"
    folder.mkdir()
    _frame(rows[:3]).to_parquet(folder / "a.parquet", index=False)
    bad = folder / "b.parquet"
    if content is None:
        _frame(rows[3:6]).drop(columns=["caption"]).to_parquet(bad, index=False)
    else:
        bad.write_bytes(content)
    with pytest.raises(UrlListError) as err:
        ingest(folder, tmp_path / "out", IngestConfig(**CONFIG))
    assert str(bad) in str(err.value) and message in str(err.value)
    assert not (tmp_path / "out" / "ingest.json").exists()          # nothing that looks complete
    assert not list((tmp_path / "out" / "shards").glob("*.tar"))     # nothing was downloaded


def test_a_part_is_read_in_bounded_chunks(tmp_path):
    frame = pd.DataFrame({"url": [f"http://a/{i}.jpg" for i in range(1000)], "caption": [f"c{i}" for i in range(1000)]})
    frame.to_parquet(tmp_path / "l.parquet", index=False, row_group_size=100)
    frame.to_csv(tmp_path / "l.csv", index=False)
    for name in ("l.parquet", "l.csv"):
        chunks = list(iter_chunks(tmp_path / name, chunk_rows=128))
        assert max(len(c) for c in chunks) <= 128 and len(chunks) >= 8
        whole = pd.concat(chunks)
        assert list(whole.index) == list(range(1000)) and whole["url"].tolist() == frame["url"].tolist()
