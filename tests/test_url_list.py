"""A bad URL list fails before any download, with the file and the problem named."""

from __future__ import annotations

import pandas as pd
import pytest

from curation.url_list import UrlListError, read_url_list
from flows.cli import main as cli


def test_reads_parquet_csv_tsv_alike(tmp_path):
    frame = pd.DataFrame({"url": ["http://a/1.jpg", "http://a/2.jpg"], "caption": ["one", "two"], "extra": ["x", "y"]})
    frame.to_parquet(tmp_path / "l.parquet")
    frame.to_csv(tmp_path / "l.csv", index=False)
    frame.to_csv(tmp_path / "l.tsv", index=False, sep="\t")
    for name in ("l.parquet", "l.csv", "l.tsv"):
        got = read_url_list(tmp_path / name)
        assert got[["url", "caption", "extra"]].values.tolist() == frame.values.tolist()


def test_custom_column_names_are_mapped(tmp_path):
    pd.DataFrame({"URL": ["http://a/1.jpg"], "TEXT": ["one"]}).to_csv(tmp_path / "l.csv", index=False)
    got = read_url_list(tmp_path / "l.csv", url_col="URL", caption_col="TEXT")
    assert got.loc[0, "url"] == "http://a/1.jpg" and got.loc[0, "caption"] == "one"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("l.csv", b"url,text\nhttp://a/1.jpg,x\n", "missing column(s) 'caption'"),
        ("l.csv", b"link,caption\nhttp://a/1.jpg,x\n", "missing column(s) 'url'"),
        ("l.xlsx", b"whatever", "unknown URL list format '.xlsx'"),
        ("l.csv", b"", "is empty (0 bytes)"),
        ("l.csv", b"url,caption\n", "header but no rows"),
        ("l.csv", b"url,caption\nhttp://a/1.jpg,caf\xe9 \xff\n", "not valid UTF-8"),
        ("l.parquet", b"PAR1 this is not parquet", "not a readable parquet file"),
    ],
)
def test_bad_lists_give_a_clear_error_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UrlListError) as err:
        read_url_list(path)
    assert str(path) in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("block", [1 << 20, 7, 1])  # the file read whole, and cut inside characters
def test_the_invalid_utf8_offset_is_the_files_own(tmp_path, block):
    from curation.url_list import first_invalid_utf8

    head = "url,caption\nhttp://a/1.jpg,caf\u00e9 \u2603 ok\nhttp://a/2.jpg,ba".encode()
    path = tmp_path / "l.csv"
    path.write_bytes(head + b"\xff\n")
    assert first_invalid_utf8(path, block) == (len(head), 3)
    with pytest.raises(UrlListError, match=f"at byte {len(head)} \\(line 3\\)"):
        read_url_list(path)
    path.write_bytes(head + b"\n")
    assert first_invalid_utf8(path, block) == (-1, -1)


def test_missing_file(tmp_path):
    with pytest.raises(UrlListError, match="not found"):
        read_url_list(tmp_path / "nope.parquet")


def test_cli_reports_the_error_and_downloads_nothing(tmp_path, capsys):
    path = tmp_path / "l.csv"
    path.write_bytes(b"url,text\nhttp://127.0.0.1:9/1.jpg,x\n")
    assert cli(["ingest", str(path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "missing column(s) 'caption'" in err and str(path) in err
    assert not (tmp_path / "out").exists()
