"""Writing a file so that a reader never sees half of it, and a file's sha256: the one copy of each.

``replacing(path)`` gives a temporary path beside ``path`` (same folder, so the final
``os.replace`` is atomic on POSIX) and moves it into place only when the block succeeds; on an
error the temporary file is removed and ``path`` is left as it was. The temporary name keeps
the suffix, for writers that choose a format by it (matplotlib, pandas). Memory: nothing beyond
what the caller writes; ``file_sha256`` streams.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only there when the block failed


def write_text_atomic(path: str | Path, text: str) -> Path:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | Path, value, **dumps) -> Path:
    """``value`` as indented JSON with a final newline (``dumps`` passed to :func:`json.dumps`)."""
    return write_text_atomic(path, json.dumps(value, **{"indent": 2, **dumps}) + "\n")


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
