"""Read and validate a URL list (parquet, csv or tsv) before anything is downloaded.

A URL list is one file, a folder of part files, or a glob of them (LAION ships hundreds of
parquet parts): :func:`list_parts` names the parts, :func:`iter_chunks` reads one part a
chunk at a time (parquet by record batches, csv/tsv by pandas' chunked reader), so memory is
bounded by the chunk size (default 65,536 rows), never by the list. Every problem is raised as
:class:`UrlListError` naming the file and what is wrong, so a bad list fails in a second
instead of after an hour of downloads; a part that breaks later on (a corrupt row group,
invalid UTF-8 in the middle) fails the run when that chunk is read, naming the part.
"""

from __future__ import annotations

import codecs
import glob
from pathlib import Path
from typing import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv"}
REQUIRED_COLUMNS = ("url", "caption")
CHUNK_ROWS = 65_536


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


def list_parts(spec: str | Path) -> list[Path]:
    """The part files of a URL list, in name order: the file itself, every parquet/csv/tsv file
    of a folder (other files, such as ``_SUCCESS``, are skipped), or every match of a glob."""
    text = str(spec)
    if any(c in text for c in "*?["):
        parts = sorted(Path(p) for p in glob.glob(text))
        if not parts:
            raise UrlListError(f"{text}: no URL list part matches")
        for part in parts:
            detect_format(part)
        return parts
    path = Path(text)
    if not path.exists():
        raise UrlListError(f"{path}: URL list not found")
    if path.is_dir():
        parts = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FORMATS)
        if not parts:
            raise UrlListError(f"{path}: a folder with no URL list part ({', '.join(sorted(FORMATS))})")
        return parts
    detect_format(path)
    return [path]


def _clean(frame: pd.DataFrame, path: Path, url_col: str, caption_col: str) -> pd.DataFrame:
    missing = [c for c in (url_col, caption_col) if c not in frame.columns]
    if missing:
        raise UrlListError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"found {', '.join(repr(str(c)) for c in frame.columns) or 'none'}"
        )
    frame = frame.rename(columns={url_col: "url", caption_col: "caption"})
    for col in ("url", "caption"):
        frame[col] = frame[col].map(lambda v: "" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v))
    return frame


def _raw_chunks(path: Path, fmt: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    if fmt == "parquet":
        reader = pq.ParquetFile(path)
        for batch in reader.iter_batches(batch_size=chunk_rows):
            yield batch.to_pandas()
        if reader.metadata.num_rows == 0:
            yield reader.schema_arrow.empty_table().to_pandas()
        return
    # strict UTF-8: undecodable bytes are an error, not silently replaced text
    yield from pd.read_csv(
        path, sep="," if fmt == "csv" else "\t", dtype=str, keep_default_na=False,
        encoding="utf-8", encoding_errors="strict", chunksize=chunk_rows,
    )


def iter_chunks(path: str | Path, url_col: str = "url", caption_col: str = "caption",
                chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """One part as DataFrames of at most ``chunk_rows`` rows, with ``url`` and ``caption``
    columns as strings; the index is the row's number in the part (what identifies a row in
    every later report). Extra columns are kept (img2dataset carries them through)."""
    path = Path(path)
    if not path.exists():
        raise UrlListError(f"{path}: URL list not found")
    if path.is_dir():
        raise UrlListError(f"{path}: is a folder; give one URL list file")
    fmt = detect_format(path)
    if path.stat().st_size == 0:
        raise UrlListError(f"{path}: URL list is empty (0 bytes)")
    rows = 0
    chunks = _raw_chunks(path, fmt, chunk_rows)
    while True:
        try:
            frame = next(chunks)
        except StopIteration:
            break
        except UnicodeDecodeError as err:
            # pandas' offset is inside the field it was decoding: find the file's own
            offset, line = first_invalid_utf8(path)
            raise UrlListError(f"{path}: not valid UTF-8 at byte {offset} (line {line}): {err.reason}") from err
        except (pa.ArrowInvalid, pa.ArrowException, OSError) as err:
            raise UrlListError(f"{path}: not a readable parquet file: {err}") from err
        except pd.errors.EmptyDataError as err:
            raise UrlListError(f"{path}: URL list has no header and no rows") from err
        except pd.errors.ParserError as err:
            raise UrlListError(f"{path}: cannot parse as {fmt}: {err}") from err
        frame = _clean(frame, path, url_col, caption_col)
        if len(frame) == 0 and rows == 0:
            continue  # a header (or schema) and nothing else: decided below
        frame.index = pd.RangeIndex(rows, rows + len(frame))
        rows += len(frame)
        yield frame
    if rows == 0:
        raise UrlListError(f"{path}: URL list has a header but no rows")


def first_invalid_utf8(path: Path, block: int = 1 << 20) -> tuple[int, int]:
    """(byte offset in the file, line number from 1) of the first byte that is not UTF-8,
    read a block at a time; (-1, -1) when the whole file decodes."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    consumed, lines = 0, 1
    with open(path, "rb") as file:
        while True:
            data = file.read(block)
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the last block
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as err:
                offset = consumed - pending + err.start
                # the pending bytes hold no newline (they are part of one character)
                return offset, lines + data[:max(0, offset - consumed)].count(b"\n")
            if not data:
                return -1, -1
            lines += data.count(b"\n")
            consumed += len(data)


def read_url_list(path: str | Path, url_col: str = "url", caption_col: str = "caption") -> pd.DataFrame:
    """A whole (small) URL list file as one DataFrame: :func:`iter_chunks` concatenated."""
    return pd.concat(list(iter_chunks(path, url_col, caption_col)))


__all__ = ["CHUNK_ROWS", "FORMATS", "UrlListError", "detect_format", "first_invalid_utf8", "iter_chunks", "list_parts",
           "read_url_list"]
