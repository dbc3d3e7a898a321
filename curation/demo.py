"""The demo's ingestion: real demo data served from loopback, downloaded by img2dataset.

Used by ``make demo`` (through the build-corpus flow), the tests and the benchmark, so the
three exercise the same path: fetch (idempotent) → serve the cache on 127.0.0.1 → write a URL
list for that server → ingest, allowing exactly that loopback host.
"""

from __future__ import annotations

from pathlib import Path

from curation.demo_data import fetch_all, write_url_list
from curation.file_server import serve_folder
from curation.ingest import IngestConfig, ingest

LOOPBACK = "127.0.0.1"


def loopback_config(config: IngestConfig) -> IngestConfig:
    """``config`` for ingesting from a demo server of our own on loopback: that host allowed,
    and no politeness limits towards it."""
    return config.model_copy(update={"allow": tuple(sorted({*config.allow, LOOPBACK})), "host_requests_per_s": 0,
                                     "host_connections": max(config.host_connections, config.threads)})


def ingest_demo(out_dir: str | Path, per_source: int | None = 200, config: IngestConfig | None = None,
                cache: str | Path | None = None, port: int = 0, caption_rule: str | None = None) -> dict:
    """Ingest ``per_source`` images of each demo source (None: all ~10,000) into ``out_dir``.

    ``caption_rule``: one of :data:`curation.demo_data.CAPTION_RULES` (None: the catalogue's).

    ``port`` 0 takes a free port; a fixed port keeps the URLs (recorded in every sample) the
    same from run to run, which a resumed run needs to reproduce an uninterrupted one."""
    out_dir = Path(out_dir)
    data = fetch_all(cache)
    config = loopback_config(config or IngestConfig())
    with serve_folder(data.cache, host=LOOPBACK, port=port) as base_url:
        url_list = write_url_list(data.catalogue, base_url, out_dir / "demo_urls.parquet", per_source, caption_rule)
        return ingest(url_list, out_dir, config)
