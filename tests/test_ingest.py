"""Ingestion through the real img2dataset (multiprocessing distributor) on a hostile list."""

from __future__ import annotations

import io
import json
import tarfile

import pandas as pd
import pytest
from PIL import Image

from curation.ingest import IngestConfig, ingest
from infra.contract import IngestReason
from tests.conftest import HOSTILE_LIMITS


def write_list(rows, path):
    pd.DataFrame(
        {
            "url": [r.url for r in rows],
            "caption": [r.caption for r in rows],
            "license": [f"lic-{i}" for i in range(len(rows))],  # an extra column to carry through
            "status": ["source-status"] * len(rows),  # a name img2dataset reserves
        }
    ).to_parquet(path, index=False)
    return path


def check_outcome(rows, out_dir, report):
    """Each row ends where its construction says it must; the counts add up."""
    expected_failed = pd.Series([r.expect for r in rows if r.expect != "downloaded"]).value_counts().to_dict()
    assert report["rows_in"] == len(rows)
    assert report["downloaded"] == sum(r.expect == "downloaded" for r in rows)
    assert report["failed"] == expected_failed
    assert report["rows_in"] == report["downloaded"] + sum(report["failed"].values())
    assert set(report["failed"]) <= {reason.value for reason in IngestReason}

    rejected = pd.read_parquet(out_dir / "rejected.parquet")
    by_row = dict(zip(rejected["row"], rejected["reason"]))
    for index, row in enumerate(rows):
        if row.expect == "downloaded":
            assert index not in by_row, (row.url, by_row.get(index))
        else:
            assert by_row.get(index) == row.expect, (row.url, by_row.get(index))
    assert rejected["detail"].str.len().gt(0).all()


def samples_by_row(out_dir):
    shards = sorted((out_dir / "shards").glob("*.tar"))
    samples = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith(".json"):
                meta = json.loads(data)
                key = name[:-5]
                samples[meta["row"]] = (meta, members[f"{key}.jpg"], members[f"{key}.txt"].decode())
    return samples


@pytest.fixture(scope="module")
def ingested(hostile_site, tmp_path_factory):
    rows, _ = hostile_site
    work = tmp_path_factory.mktemp("ingest_mp")
    url_list = write_list(rows, work / "urls.parquet")
    config = IngestConfig(processes=2, threads=8, samples_per_shard=10, **HOSTILE_LIMITS)
    report = ingest(url_list, work / "out", config)
    return rows, work, url_list, config, report


def test_every_row_is_accounted_for_with_its_reason(ingested):
    rows, work, _, _, report = ingested
    check_outcome(rows, work / "out", report)
    assert json.loads((work / "out" / "ingest.json").read_text())["failed"] == report["failed"]


def test_no_request_reached_the_internal_server(ingested, internal_site):
    rows, _, _, _, report = ingested
    assert any(row.expect == "blocked_redirect" for row in rows)
    assert internal_site[1].hits() == 0
    assert report["fetch_policy"]["max_body_bytes"] == HOSTILE_LIMITS["max_body_bytes"]


def test_samples_keep_original_size_caption_and_extra_columns(ingested):
    rows, work, _, _, _ = ingested
    samples = samples_by_row(work / "out")
    downloaded = [i for i, r in enumerate(rows) if r.expect == "downloaded"]
    assert sorted(samples) == downloaded
    for index in downloaded:
        meta, jpeg, caption = samples[index]
        with Image.open(rows[index].source_file) as original:
            assert (meta["original_width"], meta["original_height"]) == original.size
            shorter = min(original.size)
            # grey without alpha stays grey; alpha is matted onto white by img2dataset, in colour
            grayscale = original.mode in ("L", "I;16", "I")
        assert caption == rows[index].caption
        assert meta["license"] == f"lic-{index}" and meta["src_status"] == "source-status"
        image = Image.open(io.BytesIO(jpeg))
        # odd modes (CMYK, palette, 16-bit, alpha, animated) arrive as plain 8-bit JPEG
        assert image.format == "JPEG" and image.mode == ("L" if grayscale else "RGB")
        # resized so the shorter side is 256, never upscaled
        assert min(image.size) == min(shorter, 256)


def test_rerun_resumes_without_redoing_finished_shards(ingested):
    rows, work, url_list, config, report = ingested
    shards = work / "out" / "shards"
    before = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.tar")}
    # drop one shard's completion marker: exactly that shard must be redone
    redo = sorted(shards.glob("*_stats.json"))[0]
    redo.unlink()
    again = ingest(url_list, work / "out", config)
    after = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.tar")}
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {redo.name.replace("_stats.json", ".tar")}
    assert {k: again[k] for k in ("rows_in", "downloaded", "failed")} == {
        k: report[k] for k in ("rows_in", "downloaded", "failed")
    }


def test_the_host_report_counts_every_row_by_host(ingested):
    from collections import Counter

    from curation.host_report import host_of

    rows, _, _, _, report = ingested
    expected_rows = Counter(host_of(r.url) for r in rows)
    expected_failed = Counter(host_of(r.url) for r in rows if r.expect != "downloaded")
    top = report["hosts"]["top_by_failures"]
    assert report["hosts"]["exact"] is True
    assert {h["host"] for h in top} == set(expected_failed)
    for host in top:
        assert host["rows"] == expected_rows[host["host"]]
        assert sum(host["failed"].values()) == expected_failed[host["host"]]
        assert host["downloaded"] + sum(host["failed"].values()) == host["rows"]
    assert [sum(h["failed"].values()) for h in top] == sorted((sum(h["failed"].values()) for h in top), reverse=True)
