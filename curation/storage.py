"""File access for the curation pipeline through Beam's ``FileSystems``.

Every read and write of the pipeline goes through here, so raw and output folders may be
local paths, NFS, ``gs://``, ``s3://`` or any other file system Beam has (its in-memory
``memory://`` one is what the tests use as a second file system). A written file appears
whole or not at all: the bytes go to a hidden temporary name, then a rename. Files are
small (one shard's facts, one curated shard: bounded by the shard size), so a write holds
one file's bytes in memory; nothing here grows with the corpus.

Hand-written rather than fsspec: Beam is already the engine, and its ``FileSystems`` is what
a Dataflow/Flink/Spark worker is set up to reach.
"""

from __future__ import annotations

import io
import json
import posixpath
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts)


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/"))


def stem(path: str) -> str:
    return basename(path).rsplit(".", 1)[0]


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return handle.read()


def open_read(path: str):
    return FileSystems.open(path, compression_type="uncompressed")


def mkdirs(path: str) -> None:
    try:
        FileSystems.mkdirs(path)
    except (BeamIOError, OSError):
        pass  # already there (local) or not needed (object stores have no folders)


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` under a temporary name, then rename it into place."""
    folder, name = posixpath.split(path)
    mkdirs(folder)
    # a name of its own: two attempts at the same write (a retried or speculative task) never share one
    tmp = FileSystems.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    with FileSystems.create(tmp, compression_type="uncompressed") as handle:
        handle.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def write_json(path: str, value) -> None:
    write_atomic(path, (json.dumps(value, sort_keys=True, indent=1) + "\n").encode())


def read_json(path: str):
    return json.loads(read_bytes(path))


def parquet_bytes(rows: list[dict], schema: pa.Schema) -> bytes:
    table = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def write_parquet(path: str, rows: list[dict], schema: pa.Schema) -> None:
    write_atomic(path, parquet_bytes(rows, schema))


def read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(read_bytes(path)), columns=columns)


def parquet_rows(path: str) -> int:
    """Row count from the file's footer (the data is not read)."""
    with open_read(path) as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def list_files(folder: str, pattern: str) -> list[str]:
    """Complete files matching ``folder/pattern`` in name order (hidden temporaries skipped)."""
    return [path for path, _ in list_sized(folder, pattern)]


def list_sized(folder: str, pattern: str) -> list[tuple[str, int | None]]:
    """(path, size in bytes, None where the file system does not say) of the files
    :func:`list_files` lists, in the same order."""
    result = FileSystems.match([FileSystems.join(folder, pattern)])[0]
    found = [(m.path, m.size_in_bytes) for m in result.metadata_list if not basename(m.path).startswith(".")]
    return sorted(found)


def delete_tree(folder: str) -> None:
    """Remove a folder and everything below it (on an object store: every object under the prefix)."""
    if "://" not in folder:
        if FileSystems.exists(folder):
            FileSystems.delete([folder])
        return
    found = FileSystems.match([FileSystems.join(folder, "**")])[0].metadata_list
    if found:
        FileSystems.delete([m.path for m in found])
