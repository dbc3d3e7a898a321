"""The manifests of infra.contract: a file of another shape, an unknown key or counts that do
not add up are refused, naming the file and the field; a valid manifest reads back equal."""

from __future__ import annotations

import json
import re

import pytest

from infra.contract import (
    AccountingError,
    CorpusManifest,
    CurationReason,
    EvalIndexManifest,
    IngestReport,
    ManifestError,
)


def corpus_manifest(**changes) -> dict:
    """A corpus.json whose counts follow the rule: 10 inputs, 7 kept in two shards, 3 rejected."""
    manifest = {
        "preset": "align", "config": {"preset": "align"}, "input": "raw/", "inputs": 10, "kept": 7,
        "rejected": {CurationReason.TOO_SMALL.value: 2, CurationReason.TEXT_EMPTY.value: 1},
        "accounting": "10 inputs = 7 kept + 3 rejected",
        "stages": {"decode": {"in": 10, "out": 8, "rejected": {"too_small": 2}}},
        "rare_tokens_k": None, "rare_tokens_threshold_df": None, "valid_pairs": 8,
        "languages": {"kept": {"en": 7}, "rejected": {"en": {"too_small": 2, "text_empty": 1}}},
        "hash_settings": {"algorithm": "phash", "hash_size": 8}, "eval_dedup_verify": None,
        "eval_duplicates": {}, "corpus_duplicates": {"exact": 0, "near": 0},
        "shards": [{"name": "00000.tar", "samples": 4, "sha256": "a" * 64},
                   {"name": "00001.tar", "samples": 3, "sha256": "b" * 64}],
        "versions": {"apache-beam": "2.x"}, "code_revision": None,
    }
    manifest.update(changes)
    return manifest


def ingest_report(**changes) -> dict:
    parts = [{"part": 0, "file": "a.parquet", "rows_in": 5, "downloaded": 4, "failed": {"http_404": 1},
              "shards": ["00000.tar"]},
             {"part": 1, "file": "b.parquet", "rows_in": 3, "downloaded": 1, "failed": {"timeout": 2},
              "shards": ["00001.tar"]}]
    report = {"input": "urls/", "output": "out/", "rows_in": 8, "downloaded": 5,
              "failed": {"http_404": 1, "timeout": 2}, "parts": parts, "shards": ["00000.tar", "00001.tar"],
              "retries": [], "hosts": {}, "url_policy": {}, "fetch_policy": {}, "config": {}, "elapsed_s": 1.0,
              "img2dataset_s": 0.5, "versions": {}, "code_revision": None}
    report.update(changes)
    return report


def test_a_valid_corpus_manifest_reads_back_equal(tmp_path):
    path = CorpusManifest.parse(corpus_manifest()).write(tmp_path)
    assert path == tmp_path / "corpus.json"
    assert json.loads(path.read_text()) == corpus_manifest()  # the stage's "in" keeps its name on disk
    back = CorpusManifest.read(tmp_path)
    assert back.stages["decode"].in_ == 10 and back.kept == 7
    assert back.to_json() == path.read_text()


@pytest.mark.parametrize("changes, error, words", [
    ({"kept": 8}, AccountingError, "inputs 10 != kept 8 + rejected 3"),
    ({"rejected": {"too_small": 2}}, AccountingError, "inputs 10 != kept 7 + rejected 2"),
    ({"shards": [{"name": "00000.tar", "samples": 4, "sha256": "a" * 64}]}, AccountingError, "the shards hold 4"),
    ({"rejected": {"too_smol": 3}}, ManifestError, "unknown reasons ['too_smol']"),
    ({"kept_pairs": 7}, ManifestError, "kept_pairs: Extra inputs are not permitted"),
    ({"inputs": "ten"}, ManifestError, "inputs: Input should be a valid integer"),
])
def test_a_corpus_manifest_that_does_not_add_up_is_refused_naming_the_file(tmp_path, changes, error, words):
    (tmp_path / "corpus.json").write_text(json.dumps(corpus_manifest(**changes)))
    with pytest.raises(error) as raised:
        CorpusManifest.read(tmp_path)
    assert str(tmp_path / "corpus.json") in str(raised.value) and words in str(raised.value)


def test_a_missing_field_is_named():
    manifest = corpus_manifest()
    del manifest["shards"]
    with pytest.raises(ManifestError, match="shards: Field required"):
        CorpusManifest.parse(manifest, where="x/corpus.json")


@pytest.mark.parametrize("changes, words", [
    ({"downloaded": 6}, "rows_in=8 but downloaded + failed = 9"),
    ({"parts": [ingest_report()["parts"][0] | {"downloaded": 3}, ingest_report()["parts"][1]]},
     "part 0 (a.parquet): rows_in=5 but downloaded 3 + failed 1"),
    ({"parts": ingest_report()["parts"][:1]}, "the parts' rows_in / downloaded do not sum"),
    ({"failed": {"http_404": 1, "gremlins": 2}}, "unknown reasons ['gremlins']"),
])
def test_an_ingest_report_that_does_not_add_up_is_refused(changes, words):
    IngestReport.parse(ingest_report())  # the unchanged report is valid
    with pytest.raises((AccountingError, ManifestError), match=re.escape(words)):
        IngestReport.parse(ingest_report(**changes), where="out/ingest.json")


def test_an_eval_index_of_another_format_is_refused(tmp_path):
    (tmp_path / "index.json").write_text(json.dumps({"format": 2, "settings": {}, "settings_id": "x", "sets": {}}))
    with pytest.raises(ManifestError, match="index format 2, this litflow reads 1"):
        EvalIndexManifest.read(tmp_path)
