"""--retry-failed through the real img2dataset: only transiently failed rows are fetched again,
into new shards whose keys collide with none, and every row is still counted once."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile

import pandas as pd
import pytest

from curation.ingest import IngestConfig, ingest
from curation.ingest_page import render_ingest_page
from flows.cli import main as litflow
from tests.conftest import HOSTILE_LIMITS, _real_images
from tests.hostile_server import serve_hostile

SAMPLES_PER_SHARD = 4


def _keys_by_row(shards_dir):
    keys = {}
    for shard in sorted(shards_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    keys.setdefault(member.name[:-5], []).append(meta["row"])
    return keys


def test_a_retry_round_recovers_the_transient_failures_only(demo_data, tmp_path):
    images = {f"{i}.png": p.read_bytes() for i, p in enumerate(_real_images(demo_data, 6))}
    with serve_hostile(images) as (site, log):
        rows = [(f"{site}/img/{i}.png", "downloaded") for i in range(4)]           # fine the first time
        rows += [(f"{site}/flaky/1/{i}.png", "http_5xx") for i in range(4, 6)]     # 500 once, then fine
        rows += [(f"{site}/flaky/9/0.png", "http_5xx")]                            # 500 on both runs
        rows += [(f"{site}/img/missing.png", "http_404")]                          # not transient
        rows += [("http://10.1.2.3/x.png", "blocked_address")]                     # refused, never fetched
        pd.DataFrame({"url": [u for u, _ in rows], "caption": [f"row {i}" for i in range(len(rows))]}).to_parquet(
            tmp_path / "urls.parquet", index=False)
        config = IngestConfig(processes=1, threads=4, samples_per_shard=SAMPLES_PER_SHARD, **HOSTILE_LIMITS)
        out = tmp_path / "out"
        first = ingest(tmp_path / "urls.parquet", out, config)
        assert first["downloaded"] == 4
        assert first["failed"] == {"http_5xx": 3, "http_404": 1, "blocked_address": 1}
        assert first["retries"] == []
        hits_404 = log.hits("/img/missing.png")

        code = litflow(["ingest", str(tmp_path / "urls.parquet"), str(out), "--retry-failed", "--processes", "1",
                        "--threads", "4", "--samples-per-shard", str(SAMPLES_PER_SHARD), "--deadline", "3",
                        "--timeout", "5", "--allow", "127.0.0.1", "--max-body-bytes", str(HOSTILE_LIMITS["max_body_bytes"])])
        assert code == 0
        assert log.hits("/img/missing.png") == hits_404  # a 404 is not tried again
    report = json.loads((out / "ingest.json").read_text())
    # the two flaky rows came back; the one that fails every time is still a 5xx; the rest as before
    assert report["downloaded"] == 6
    assert report["failed"] == {"http_5xx": 1, "http_404": 1, "blocked_address": 1}
    assert report["rows_in"] == len(rows) == report["downloaded"] + sum(report["failed"].values())
    (retry,) = report["retries"]
    assert (retry["round"], retry["rows"], retry["recovered"], retry["failed_again"]) == (1, 3, 2, {"http_5xx": 1})
    assert retry["shards"] and set(retry["shards"]) <= set(report["shards"])
    first_pass_shards = -(-(len(rows) - 1) // SAMPLES_PER_SHARD)  # the refused row is not given to img2dataset
    assert all(int(name[:5]) >= first_pass_shards for name in retry["shards"])  # numbered after the first pass
    # every downloaded row is in exactly one sample, and no key is used twice
    keys = _keys_by_row(out / "shards")
    assert all(len(r) == 1 for r in keys.values())
    downloaded_rows = sorted(r[0] for r in keys.values())
    assert downloaded_rows == [i for i, (_, expect) in enumerate(rows)
                               if expect == "downloaded" or i in (4, 5)]
    rejected = pd.read_parquet(out / "rejected.parquet")
    assert dict(zip(rejected["row"], rejected["reason"])) == {6: "http_5xx", 7: "http_404", 8: "blocked_address"}

    # resuming without the flag keeps the round's outcome; with it, the one still failing is tried again
    again = ingest(tmp_path / "urls.parquet", out, config)
    assert (again["downloaded"], again["failed"], len(again["retries"])) == (6, report["failed"], 1)
    assert again["hosts"] == report["hosts"]
    page = (out / "ingest.html").read_text()
    assert re.search(r"id=.downloaded.>(\d+)<", page).group(1) == str(again["downloaded"]) and "http://" not in page

    # a second round, with the site gone: the row still failing is counted by its latest attempt
    latest = ingest(tmp_path / "urls.parquet", out, config, retry_failed=True)
    assert [r["rows"] for r in latest["retries"]] == [3, 1]
    assert latest["retries"][1]["failed_again"] == {"connection_refused": 1}
    assert latest["failed"] == {"connection_refused": 1, "http_404": 1, "blocked_address": 1}
    assert latest["downloaded"] == 6
    rejected = pd.read_parquet(out / "rejected.parquet")
    assert dict(zip(rejected["row"], rejected["reason"]))[6] == "connection_refused"


def test_a_round_cut_off_before_its_marker_is_removed(tmp_path):
    from curation.retry_rounds import Round, completed_rounds
    from infra.files import write_json_atomic

    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    for name in ("00002.tar", "00002.parquet", "00002_stats.json", "00003.tar", "00001.tar"):
        (out / "shards" / name).write_bytes(b"x")
    (out / "retries" / "002" / "shards").mkdir(parents=True)
    done = Round(1, 1, ((0, 3),), 4)  # shard 00001, complete
    write_json_atomic(out / "retries" / "001.json", done.to_dict())
    cut = Round(2, 2, ((0, 5),), 4)   # shards 00002-00003, moved in part, never marked
    write_json_atomic(out / "retries" / "002" / "plan.json", cut.to_dict())
    assert completed_rounds(out) == [done]
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["00001.tar"]
    assert not (out / "retries" / "002").exists()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (infra/install.sh installs it)")
def test_the_ingest_page_in_headless_chromium(tmp_path):
    """The page next to ingest.json, rendered by a real browser offline: its numbers are the report's."""
    report = {"rows_in": 9, "downloaded": 6, "failed": {"http_404": 1, "http_5xx": 1, "blocked_address": 1},
              "output": str(tmp_path), "img2dataset_s": 1.5,
              "hosts": {"top_by_failures": [{"host": "a.example", "rows": 5, "downloaded": 3,
                                             "failed": {"http_404": 1, "http_5xx": 1}},
                                            {"host": "<b>odd</b>", "rows": 1, "downloaded": 0,
                                             "failed": {"blocked_address": 1}}], "exact": True, "hosts_counted": 2},
              "retries": [{"round": 1, "rows": 3, "recovered": 2, "failed_again": {"http_5xx": 1}}],
              "parts": [{"part": 0, "file": "urls.parquet", "rows_in": 9, "downloaded": 6,
                         "failed": {"http_404": 1, "http_5xx": 1, "blocked_address": 1}}]}
    page = tmp_path / "ingest.html"
    page.write_text(render_ingest_page(report))
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text  # nothing fetched
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([_chromium(), *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert re.search(r'id="rows-in">(\d+)<', dom).group(1) == "9"
    assert re.search(r'id="failed">(\d+)<', dom).group(1) == "3"
    for table, rows in (("reasons", 3), ("hosts", 2), ("retries", 1), ("parts", 1)):
        section = dom.split(f'id="{table}"', 1)[1].split("</table>", 1)[0]
        assert section.count('class="row"') == rows, table
    assert "&lt;b&gt;odd&lt;/b&gt;" in dom  # a host name is text, never markup
