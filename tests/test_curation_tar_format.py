"""curation.tar_format against the standard library's tarfile, the reference it replaces on the
hot path: the same header and archive bytes when writing, and — for well-formed, unusual and
broken tars alike — the same members, data, offsets and errors when reading."""

from __future__ import annotations

import gzip
import io
import os
import random
import tarfile

import pytest

from curation.shards import OFFSETS, read_member_at, read_shard, shard_bytes
from curation.tar_format import BLOCK, TarReader, tar_bytes, ustar_header
from infra.contract import empty_pair


def _tarfile_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o644, "", ""
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def _tarfile_archive(members) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["a.jpg", "000010001.json", "x" * 100, "é/ü.txt", "dir/" * 30 + "key.jpg"])
@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 10 ** 6, 8 ** 11 - 1])
def test_headers_are_the_bytes_tarfile_writes(name, size):
    assert ustar_header(name, size) == _tarfile_header(name, size)


def test_names_tarfile_cannot_write_fail_the_same_way():
    for name in ("y" * 101, "z" * 300):  # no '/' to split at a USTAR prefix
        with pytest.raises(ValueError):
            _tarfile_header(name, 1)
        with pytest.raises(ValueError):
            ustar_header(name, 1)


@pytest.mark.parametrize("seed", range(20))
def test_archives_are_the_bytes_tarfile_writes(seed):
    rng = random.Random(seed)
    members = [(f"{rng.randrange(10 ** 9):09d}.{ext}", rng.randbytes(rng.choice([0, 1, 511, 512, 513, rng.randrange(5000)])))
               for _ in range(rng.randrange(0, 30)) for ext in ("jpg", "txt")]
    assert tar_bytes(members) == _tarfile_archive(members)


def test_a_curated_shard_is_the_tar_it_always_was():
    samples = [(empty_pair(key=f"{i:09d}", caption=f"caption {i} ünïcode", status="kept"), os.urandom(700 + i))
               for i in range(40)]
    data, _ = shard_bytes(samples)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        assert names[:3] == ["000000000.jpg", "000000000.txt", "000000000.json"] and len(names) == 120
        assert tar.extractfile("000000007.jpg").read() == samples[7][1]


# ---- reading: tarfile as the reference ------------------------------------------------------

def _reference(data: bytes):
    """What the tarfile-based reader returned: [(name, offset or None, data)] then the error."""
    out = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tar:
            located = tar.fileobj.comptype == "tar"
            for member in tar:
                if member.isfile():
                    out.append((member.name, member.offset_data if located else None, tar.extractfile(member).read()))
    except tarfile.TarError as err:
        out.append(("error", type(err).__name__, str(err)))
    return out


def _ours(data: bytes):
    out = []
    try:
        reader = TarReader(io.BytesIO(data))
        for name, offset, _ in reader:
            out.append((name, offset, reader.read()))
    except tarfile.TarError as err:
        out.append(("error", type(err).__name__, str(err)))
    return out


def _archive(fmt: int, entries, compress: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for kind, name, data in entries:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, "elsewhere"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    return gzip.compress(data, mtime=0) if compress else data


def _entries(rng: random.Random):
    plain = [("file", f"{i:09d}.{ext}", rng.randbytes(rng.randrange(0, 1500))) for i in range(6) for ext in ("jpg", "txt")]
    odd = [("dir", "folder", b""), ("file", "folder/000000099.jpg", b"in a folder"), ("link", "000000098.jpg", b""),
           ("file", "n" * 150 + ".jpg", b"a long name"), ("file", "ключ.txt", "не ASCII".encode()),
           ("file", "000000097.json", b"{}")]
    entries = plain[:6] + odd + plain[6:]
    return plain, entries


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_well_formed_and_unusual_tars_read_as_tarfile_reads_them(fmt):
    rng = random.Random(fmt)
    plain, entries = _entries(rng)
    assert _ours(_archive(fmt, plain)) == _reference(_archive(fmt, plain))
    if fmt != tarfile.USTAR_FORMAT:  # long and non-ASCII names need GNU or pax headers: tarfile takes over there
        unusual = _archive(fmt, entries)
        expected = _reference(unusual)
        assert [name for name, _, _ in expected][6:9] == ["folder/000000099.jpg", "n" * 150 + ".jpg", "ключ.txt"]
        assert _ours(unusual) == expected
    compressed = _archive(fmt, plain, compress=True)
    assert _ours(compressed) == _reference(compressed) and _ours(compressed)[0][1] is None


def test_broken_tars_end_or_fail_as_tarfile_does():
    rng = random.Random(7)
    plain, _ = _entries(rng)
    data = _archive(tarfile.USTAR_FORMAT, plain)
    cases = {"empty": b"", "garbage": rng.randbytes(3000), "one short block": data[:100]}
    for cut in sorted({rng.randrange(1, len(data)) for _ in range(60)} | {BLOCK, 2 * BLOCK, len(data) - 2 * BLOCK}):
        cases[f"cut at {cut}"] = data[:cut]
    for at in (0, 3 * BLOCK, 7 * BLOCK + 100):  # a flipped byte: a bad checksum or bad data
        broken = bytearray(data)
        broken[at + 5] ^= 0xFF
        cases[f"flipped at {at}"] = bytes(broken)
    for label, case in cases.items():
        assert _ours(case) == _reference(case), label
    name, offset, member = next(m for m in _reference(data)[1:] if len(m[2]) > 1)
    cut = _ours(data[:offset + 1])  # data cut short is an error, after what came before it
    assert cut[-1] == ("error", "ReadError", "unexpected end of data") and cut[-2][0] != name


def test_read_shard_groups_members_and_locates_them(tmp_path):
    samples = [(empty_pair(key=f"{i:09d}", caption=f"caption {i}", status="kept"), os.urandom(600 + i)) for i in range(5)]
    data, _ = shard_bytes(samples)
    path = tmp_path / "00000.tar"
    path.write_bytes(data)
    read = list(read_shard(path, offsets=True))
    assert [s["__key__"] for s in read] == [r["key"] for r, _ in samples]
    with open(path, "rb") as handle:
        for sample, (_, image) in zip(read, samples):
            assert sample["jpg"] == image
            offset, size = sample[OFFSETS]["jpg"]
            assert read_member_at(handle, offset, size, sample["__key__"]) == image
