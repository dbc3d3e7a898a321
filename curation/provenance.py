"""What produced an output: library versions and the code revision, for run manifests."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from importlib import metadata

from infra.paths import PROJECT_ROOT

TRACKED_DISTRIBUTIONS = (
    "litflow", "apache-beam", "img2dataset", "pyspark", "torch", "webdataset",
    "langdetect", "imagehash", "prefect", "pillow", "opencv-python-headless", "numpy", "pyarrow",
)


def library_versions(names: tuple[str, ...] = TRACKED_DISTRIBUTIONS) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@lru_cache(maxsize=1)
def code_revision() -> str:
    """The git commit of the litflow checkout, with '+dirty' when it has local changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")
