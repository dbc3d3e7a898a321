"""Webdataset shards, written atomically and byte-for-byte reproducibly.

A shard is ``NAME.tar`` holding ``KEY.jpg``, ``KEY.txt`` and ``KEY.json`` per sample (the
webdataset convention) plus ``NAME.parquet``, its manifest (one row per sample). Both are
written under a temporary name and renamed when complete, so a crash never leaves a half
shard that looks whole. The tar is written by :mod:`curation.tar_format` (the bytes
``tarfile`` writes in USTAR format, without its per-member cost) rather than
``webdataset.TarWriter``, because we need fixed mtimes/owners for identical bytes across runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from curation.tar_format import BLOCK, TarReader, parse_header, tar_bytes
from infra.contract import PAIR_SCHEMA


def shard_bytes(samples: Iterable[tuple[dict, bytes]]) -> tuple[bytes, list[dict]]:
    """The tar of ``samples`` ((record, jpeg bytes), in the given order) and its records.

    The record's ``caption`` becomes ``KEY.txt``; the whole record is ``KEY.json``.
    """
    records, members = [], []
    for record, image in samples:
        key = record["key"]
        members += [(f"{key}.jpg", image), (f"{key}.txt", (record.get("caption") or "").encode("utf-8")),
                    (f"{key}.json", json.dumps(record, sort_keys=True, ensure_ascii=False).encode("utf-8"))]
        records.append(record)
    return tar_bytes(members), records


def write_shard(directory: str | Path, name: str, samples: Iterable[tuple[dict, bytes]],
                schema: pa.Schema = PAIR_SCHEMA) -> Path:
    """Write ``samples`` ((record, jpeg bytes), in the given order) as shard ``name``: the tar
    and a manifest row per record. Returns the tar's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tar_path, manifest_path = directory / f"{name}.tar", directory / f"{name}.parquet"
    tmp_tar, tmp_manifest = directory / f".{name}.tar.tmp", directory / f".{name}.parquet.tmp"
    data, records = shard_bytes(samples)
    tmp_tar.write_bytes(data)
    table = pa.Table.from_pylist(records, schema=schema) if records else schema.empty_table()
    pq.write_table(table, tmp_manifest)
    os.replace(tmp_manifest, manifest_path)
    os.replace(tmp_tar, tar_path)  # the tar last: its presence means the shard is complete
    return tar_path


OFFSETS = "__offsets__"


def _key_and_ext(member_name: str) -> tuple[str, str]:
    """A member's sample key and extension (webdataset: ``dir/KEY.EXT``, the key up to the
    first dot of the base name)."""
    key, _, ext = member_name.rsplit("/", 1)[-1].partition(".")
    return key, ext


def read_shard(tar_path: str | Path, fileobj=None, offsets: bool = False) -> Iterator[dict[str, bytes]]:
    """Yield samples as {"__key__": key, ext: bytes, ...}, grouping members by key in order.

    Reads ``fileobj`` (an open binary stream, e.g. from Beam's FileSystems) when given, else
    ``tar_path``, as a stream (:class:`curation.tar_format.TarReader`): one sample's bytes in
    memory at a time. Tolerates what raw shards can contain: a key with only some of its
    files, and a key that appears again later (yielded again, for the caller to reject as a
    duplicate). With ``offsets`` and an uncompressed tar, each sample also has ``OFFSETS``:
    {ext: (byte offset of the member's data in the file, size)}, so a later pass can read one
    member without parsing the headers before it (:func:`read_member_at`).
    """
    if fileobj is None:
        with open(tar_path, "rb") as handle:
            yield from read_shard(tar_path, handle, offsets)
        return
    current: dict | None = None
    tar = TarReader(fileobj)
    for name, offset, size in tar:
        key, ext = _key_and_ext(name)
        if current is None or current["__key__"] != key or ext in current:
            if current is not None:
                yield current  # before reading on: a sample is whole once the next one begins
            current = {"__key__": key, OFFSETS: {}} if offsets and tar.located else {"__key__": key}
        current[ext] = tar.read()
        if offsets and tar.located:
            current[OFFSETS][ext] = (offset, size)
    if current is not None:
        yield current


def read_member_at(handle, offset: int, size: int, key: str) -> bytes | None:
    """The ``size`` bytes at ``offset`` of an open, seekable tar — when the header just before
    them names a member of sample ``key`` with that size; else None (the caller falls back to
    reading the tar as a stream). Reads one 512-byte header and the data, nothing else."""
    try:
        handle.seek(offset - BLOCK)
        block = handle.read(BLOCK + size)
    except (OSError, ValueError):
        return None
    header = parse_header(block[:BLOCK]) if len(block) == BLOCK + size else None
    if header is None or header[2] != size or _key_and_ext(header[0])[0] != key:
        return None
    return block[BLOCK:]


def list_shards(directory: str | Path) -> list[Path]:
    """Complete shards in a folder, in name order (temporary files are ignored)."""
    return sorted(p for p in Path(directory).glob("*.tar") if not p.name.startswith("."))
