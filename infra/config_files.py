"""Reading the TOML files users write (eval sets, run files, curation and ingest options), and
saying what is wrong with them: one place, so every config file fails the same clear way.

Imports no litflow library (infra is the bottom layer); pydantic errors are formatted from
their plain ``errors()`` records. Memory: one file's text.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path


def read_toml(path: str | Path, what: str) -> dict:
    """The tables of a TOML file; a missing or malformed file is an error naming ``what`` and the path.

    A ``.json`` file is read as JSON (a run's own ``config.json`` can be given back)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise ValueError(f"{path}: not valid {kind} ({err})") from None


def problems(error) -> str:
    """A pydantic ``ValidationError`` as one line: ``field.path: message; ...``."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in error.errors())
