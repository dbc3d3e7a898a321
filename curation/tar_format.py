"""The plain tar members webdataset shards are made of, read and written without ``tarfile``'s
per-member overhead.

Why by hand: a shard is thousands of small members (a 64-px JPEG, a caption, a json), and
``tarfile`` spends more on each member's header than the rest of the write costs — building
a ``TarInfo``, copying it, formatting and checksumming the header field by field (about 40 µs
a member here; the curated-shard write was dominated by it). The formats are fixed by POSIX,
and ``tarfile`` stays the reference: the tests check these bytes against it.

* :func:`ustar_header` — exactly the header ``tarfile`` writes in ``USTAR_FORMAT`` for a
  regular file with mode 0644, uid/gid 0, empty owner names and mtime 0 (what litflow's
  shards have always held, for identical bytes across runs). A name longer than 100 bytes,
  or a size of 8 GiB and more, goes through ``tarfile``'s own header code (a prefix split, or
  the same ``ValueError``).
* :func:`tar_bytes` — a whole archive of such members, closed as ``tarfile`` closes one (two
  zero blocks, then zeros up to a multiple of its 10,240-byte record).

* :class:`TarReader` — the regular files of a tar stream, in order, each with its data's
  offset in the file. It parses the headers webdataset shards hold (regular files and
  directories, octal sizes; the name, size and checksum fields: mode, owners and times are not
  used and not parsed) and hands everything else to ``tarfile``: a compressed or otherwise
  unrecognised start hands it the whole stream, and the first member of another kind (a pax or
  GNU long-name header, a link, a base-256 size) the rest of it, from that header on — so any
  tar ``tarfile`` reads is read, with the same members and offsets. Where a tar is broken it
  does what ``tarfile`` does when read as a stream: a bad first header is a ``ReadError``; past
  it, a zero block, a short header or one with a bad checksum ends the archive; data, or the
  padding after it, cut short is ``ReadError("unexpected end of data")`` — raised when the
  member's data is read, or when reading on past the padding.

Memory: a written archive's bytes (one curated shard: bounded by the shard size); one
member's bytes at a time while reading.
"""

from __future__ import annotations

import tarfile
from typing import Iterable, Iterator

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
_NAME = 100
_MAX_SIZE = 8 ** 11  # 11 octal digits: USTAR's largest size
# every field after name, mode, uid, gid, size and mtime: the checksum placeholder (8 spaces),
# type '0', empty link name, the POSIX magic, empty owners, empty device fields and prefix
_TAIL = b" " * 8 + tarfile.TarInfo("x").tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")[156:]
_MODE_IDS = b"0000644\x000000000\x000000000\x00"  # mode 0644, uid 0, gid 0
_MTIME = b"00000000000\x00"
_TAIL_SUM = sum(_TAIL)


def _reference_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o644, "", ""
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte header of a regular file ``name`` of ``size`` bytes (see module doc)."""
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) > _NAME or not 0 <= size < _MAX_SIZE:
        return _reference_header(name, size)
    head = encoded + bytes(_NAME - len(encoded)) + _MODE_IDS + b"%011o\x00" % size + _MTIME
    # the checksum is the byte sum of the header with its own field as 8 spaces; _TAIL holds them
    checksum = sum(head) + _TAIL_SUM
    return head + b"%06o\x00" % checksum + _TAIL[7:]


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """An uncompressed USTAR archive of ``members`` ((name, data), in order)."""
    parts, offset = [], 0
    for name, data in members:
        parts.append(ustar_header(name, len(data)))
        parts.append(data)
        pad = -len(data) % BLOCK
        if pad:
            parts.append(bytes(pad))
        offset += BLOCK + len(data) + pad
    offset += 2 * BLOCK
    parts.append(bytes(2 * BLOCK + (-offset % RECORD)))
    return b"".join(parts)


_ZERO_BLOCK = bytes(BLOCK)
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)


def parse_header(block: bytes) -> tuple[str, bytes, int] | None:
    """(name, type, size) of a header this module reads itself; None for anything else (a
    bad checksum, a base-256 or malformed number, a type other than file or directory)."""
    kind = block[156:157]
    if kind not in _FILE_TYPES and kind != tarfile.DIRTYPE:
        return None
    size_field = block[124:136]
    if size_field[0] in (0o200, 0o377):
        return None
    try:
        size = int(size_field.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return None
    if not _checksum_ok(block):
        return None
    name = block[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    prefix = block[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    if kind == tarfile.AREGTYPE and name.endswith("/"):
        kind = tarfile.DIRTYPE
    if kind == tarfile.DIRTYPE:
        name = name.rstrip("/")
    if prefix:
        name = prefix + "/" + name
    return name, kind, size


class _Chained:
    """A read-only stream: ``head`` (bytes already read), then the rest of ``rest``."""

    def __init__(self, head: bytes, rest):
        self._head, self._rest = head, rest

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._rest.read(size)
        if size is None or size < 0:
            data, self._head = self._head + self._rest.read(), b""
            return data
        data, self._head = self._head[:size], self._head[size:]
        return data + self._rest.read(size - len(data)) if len(data) < size else data


class TarReader:
    """The regular files of a tar stream: iterate for (name, data offset, size), and call
    :meth:`read` for the data of the member just yielded (see module doc). ``located`` tells
    whether the offsets are offsets in the file (False for a compressed tar: then None)."""

    def __init__(self, fileobj):
        self._file = fileobj
        self._read_data = None
        self._unread = 0  # bytes of the current member's data not yet read (fast path)
        self.located = True

    def read(self) -> bytes:
        return self._read_data()

    def _read_member(self) -> bytes:
        size, self._unread = self._unread, 0
        data = self._file.read(size)
        if len(data) != size:
            raise tarfile.ReadError("unexpected end of data")
        return data

    def __iter__(self) -> Iterator[tuple[str, int | None, int]]:
        source, position = self._file, 0
        block = source.read(BLOCK)
        header = parse_header(block) if len(block) == BLOCK else None
        if header is None:  # compressed, or not a header this module reads: tarfile reads it all
            yield from self._from_tarfile(_Chained(block, source), 0, "r|*")
            return
        while True:
            name, kind, size = header
            position += BLOCK
            self._unread = size
            if kind != tarfile.DIRTYPE:
                self._read_data = self._read_member
                yield name, position, size
            skip = self._unread + (-size % BLOCK)  # data the caller did not read, then the padding
            if skip and len(source.read(skip)) != skip:
                raise tarfile.ReadError("unexpected end of data")
            position += size + (-size % BLOCK)
            block = source.read(BLOCK)
            if len(block) != BLOCK or block == _ZERO_BLOCK:
                return  # the end: an end-of-archive block, or a short or missing header
            header = parse_header(block)
            if header is None:
                if not _checksum_ok(block):
                    return  # a header with a bad checksum past the first ends the archive
                yield from self._from_tarfile(_Chained(block, source), position, "r|")
                return

    def _from_tarfile(self, stream, base: int, mode: str) -> Iterator[tuple[str, int | None, int]]:
        with tarfile.open(fileobj=stream, mode=mode) as tar:
            self.located = getattr(tar.fileobj, "comptype", "tar") == "tar"
            for member in tar:
                if member.isfile():
                    self._read_data = lambda member=member: tar.extractfile(member).read()
                    yield member.name, base + member.offset_data if self.located else None, member.size


def _checksum_ok(block: bytes) -> bool:
    """``tarfile``'s test (the stored checksum is the header's unsigned or signed byte sum, its
    own field counted as spaces), with the sums taken over the bytes at once."""
    field = block[148:156]
    try:
        stored = tarfile.nti(field)
    except tarfile.HeaderError:
        return False
    return (stored == 256 + sum(block) - sum(field)
            or stored == 256 + sum(memoryview(block).cast("b")) - sum(memoryview(field).cast("b")))


__all__ = ["BLOCK", "TarReader", "parse_header", "tar_bytes", "ustar_header"]
