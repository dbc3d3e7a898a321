"""The ingestion options as one validated model (pydantic): what ``litflow ingest`` and the
build-corpus flow take, and what ``ingest.json`` records whole.

Kept apart from :mod:`curation.ingest` so that building the command line (its flags are made
from this model) imports neither pandas nor img2dataset. Memory: the options only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from curation.fetch import FetchPolicy
from curation.url_safety import UrlPolicy
from infra.config_files import problems, read_toml

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
# Pillow refuses to open anything over twice its limit, whatever the limit is set to: the
# strict gate cannot let more through, so a larger --max-pixels is refused when configured
HARD_MAX_PIXELS = 2 * DEFAULT_MAX_PIXELS


class IngestConfig(BaseModel):
    """Every ingestion option; ``litflow ingest``'s flags and the build-corpus form are made from it.

    ``flag`` in a field's extras is its command-line name where that is not the field's name.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(256, gt=0, description="shorter side after resizing (small images are not upscaled)")
    resize_mode: Literal["keep_ratio", "keep_ratio_largest", "center_crop", "border", "no"] = Field(
        "keep_ratio", description="img2dataset's resize mode: shorter side to image_size, aspect kept")
    resize_only_if_bigger: bool = Field(True, description="never invent pixels for small images")
    encode_format: Literal["jpg", "png", "webp"] = Field("jpg", description="image format in the shards")
    encode_quality: int = Field(95, ge=1, le=100, description="JPEG/WebP quality")
    samples_per_shard: int = Field(1000, gt=0, description="samples per raw shard")
    processes: int = Field(default_factory=lambda: os.cpu_count() or 1, gt=0,
                           description="download processes (default: CPU count)")
    threads: int = Field(32, gt=0, description="download threads per process")
    timeout_s: float = Field(10.0, gt=0, json_schema_extra={"flag": "--timeout"},
                             description="seconds any one connect or read may take")
    retries: int = Field(0, ge=0, description="extra attempts at a transiently failed download")
    deadline_s: float = Field(60.0, gt=0, json_schema_extra={"flag": "--deadline"},
                              description="seconds one whole download may take: every redirect, byte and wait")
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0, description="refuse responses larger than this (32 MiB)")
    max_redirects: int = Field(5, ge=0, description="redirects followed per URL, each hop checked")
    host_connections: int = Field(4, gt=0, description="downloads in flight per host, per process")
    host_requests_per_s: float = Field(20.0, ge=0, json_schema_extra={"flag": "--host-rate"},
                                       description="request starts per host per second, per process; 0: no cap")
    max_retry_after_s: float = Field(30.0, ge=0, description="longest 429/503 Retry-After waited out")
    contact: str | None = Field(None, description="your URL or e-mail, sent in the User-Agent so site owners "
                                "can reach you")
    robots_txt: bool = Field(False, description="also obey each host's robots.txt (fetched once per host and "
                             "process; unreachable: nothing fetched from it)")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0, le=HARD_MAX_PIXELS,
                            description="refuse images with more pixels (decompression bombs; Pillow's own limit)")
    distributor: Literal["multiprocessing", "pyspark"] = Field("multiprocessing", description="where downloads run")
    spark_master: str | None = Field(None, description="with pyspark: spark://HOST:PORT (default local[PROCESSES])")
    spark_driver_host: str | None = Field(None, description="driver address as seen from Spark workers "
                                          "(default: 127.0.0.1 for a loopback master)")
    allow: tuple[str, ...] = Field((), json_schema_extra={"metavar": "HOST|IP|CIDR"},
                                   description="let URLs to this internal host/network through (repeatable); by "
                                   "default private, loopback, link-local and multicast addresses are refused")
    url_col: str = Field("url", description="name of the URL column")
    caption_col: str = Field("caption", description="name of the caption column")

    @model_validator(mode="after")
    def _limits(self):
        self.fetch_policy()  # refuses impossible limits before anything runs
        return self

    def fetch_policy(self) -> FetchPolicy:
        return FetchPolicy(
            url_policy=UrlPolicy.allowing(self.allow), timeout_s=self.timeout_s, deadline_s=self.deadline_s,
            max_body_bytes=self.max_body_bytes, max_redirects=self.max_redirects,
            host_connections=self.host_connections, host_requests_per_s=self.host_requests_per_s,
            max_retry_after_s=self.max_retry_after_s, contact=self.contact, robots_txt=self.robots_txt,
        )


def load_ingest_config(file: str | Path | None = None, fields: dict | None = None) -> IngestConfig:
    """Defaults < a TOML ``file`` (field names at the top level) < ``fields`` (flags), validated once."""
    merged = {**(read_toml(file, "ingest config") if file is not None else {}), **(fields or {})}
    try:
        return IngestConfig.model_validate(merged)
    except ValidationError as err:
        raise ValueError(f"ingest config{f' in {file}' if file else ''}: {problems(err)}") from None
