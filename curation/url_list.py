"""Read and validate a URL list (parquet, csv or tsv) before anything is downloaded.

Every problem is raised as :class:`UrlListError` naming the file and what is wrong, so a
bad list fails in a second instead of after an hour of downloads.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv"}
REQUIRED_COLUMNS = ("url", "caption")


class UrlListError(ValueError):
    """A URL list cannot be used; the message names the file and the problem."""


def detect_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UrlListError(
            f"{path}: unknown URL list format {path.suffix or '(no extension)'!r}; "
            f"expected one of {', '.join(sorted(FORMATS))}"
        )
    return fmt


def read_url_list(path: str | Path, url_col: str = "url", caption_col: str = "caption") -> pd.DataFrame:
    """Load a URL list as a DataFrame of strings, with ``url`` and ``caption`` columns.

    Extra columns are kept (img2dataset carries them through). Rows keep their order; the
    row number is what identifies a row in every later report.
    """
    path = Path(path)
    if not path.exists():
        raise UrlListError(f"{path}: URL list not found")
    if path.is_dir():
        raise UrlListError(f"{path}: is a folder; give one URL list file")
    fmt = detect_format(path)
    if path.stat().st_size == 0:
        raise UrlListError(f"{path}: URL list is empty (0 bytes)")
    try:
        if fmt == "parquet":
            frame = pq.read_table(path).to_pandas()
        else:
            # strict UTF-8: undecodable bytes are an error, not silently replaced text
            frame = pd.read_csv(
                path,
                sep="," if fmt == "csv" else "\t",
                dtype=str,
                keep_default_na=False,
                encoding="utf-8",
                encoding_errors="strict",
            )
    except UnicodeDecodeError as err:
        raise UrlListError(f"{path}: not valid UTF-8 at byte {err.start}: {err.reason}") from err
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as err:
        raise UrlListError(f"{path}: not a readable parquet file: {err}") from err
    except pd.errors.EmptyDataError as err:
        raise UrlListError(f"{path}: URL list has no header and no rows") from err
    except pd.errors.ParserError as err:
        raise UrlListError(f"{path}: cannot parse as {fmt}: {err}") from err

    missing = [c for c in (url_col, caption_col) if c not in frame.columns]
    if missing:
        raise UrlListError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"found {', '.join(repr(str(c)) for c in frame.columns) or 'none'}"
        )
    if len(frame) == 0:
        raise UrlListError(f"{path}: URL list has a header but no rows")
    frame = frame.rename(columns={url_col: "url", caption_col: "caption"})
    for col in ("url", "caption"):
        frame[col] = frame[col].map(lambda v: "" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v))
    return frame.reset_index(drop=True)
