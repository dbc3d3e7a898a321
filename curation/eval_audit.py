"""The eval de-duplication audit of a curated corpus: read its shards, then :func:`dedup.report.build_report`.

Memory: the corpus's rows (:mod:`curation.corpus_reader`) and every match, as the report needs.
"""

from __future__ import annotations

from pathlib import Path

from curation.corpus_reader import read_corpus
from dedup.index import index_settings
from dedup.report import build_report


def audit_corpus(corpus_dir: str | Path, index_dir: str | Path, out: str | Path, **options) -> dict:
    """Write ``out/`` (report.json, matches.parquet, report.html, ...) for the corpus against the index.

    ``options`` are :func:`dedup.report.build_report`'s (radius, mode, near_radius, page_size,
    embedding_matches, verify, verifier). The corpus is hashed with the index's settings when
    it holds no stored hashes; stored hashes made with other settings are an error.
    """
    corpus = read_corpus(corpus_dir, index_settings(index_dir))
    return build_report(corpus, index_dir, out, **options)
