"""Where litflow keeps things by default: all under the project, all git-ignored."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_cache_dir() -> Path:
    """Fetched third-party data (never committed). Override with LITFLOW_CACHE."""
    return Path(os.environ.get("LITFLOW_CACHE", PROJECT_ROOT / ".cache"))


def default_work_dir() -> Path:
    """Outputs of runs (shards, reports). Override with LITFLOW_WORK."""
    return Path(os.environ.get("LITFLOW_WORK", PROJECT_ROOT / "work"))
