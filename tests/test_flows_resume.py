"""Stage markers: skip only when config, upstream and outputs are unchanged (no Prefect here)."""

from __future__ import annotations

from flows.resume import Stage


def make(tmp_path, config=None, upstream=None):
    return Stage(tmp_path, "work", tmp_path / "out", config or {"k": 1}, upstream or {"up": "abc"})


def test_skips_only_when_everything_is_unchanged(tmp_path):
    calls = []

    def work():
        calls.append(1)
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "out" / "a.txt").write_text("result")
        (tmp_path / "out" / "sub").mkdir(exist_ok=True)
        (tmp_path / "out" / "sub" / "b.bin").write_bytes(b"\x00\x01")
        return {"value": 42}

    first = make(tmp_path).run(work)
    assert first["value"] == 42 and first["skipped"] is False and len(calls) == 1
    second = make(tmp_path).run(work)
    assert second["skipped"] is True and second["digest"] == first["digest"] and len(calls) == 1

    (tmp_path / "out" / "sub" / "b.bin").write_bytes(b"\x00\x02")       # an output edited on disk
    assert make(tmp_path).run(work)["skipped"] is False and len(calls) == 2
    (tmp_path / "out" / "a.txt").unlink()                                 # an output deleted
    assert make(tmp_path).run(work)["skipped"] is False and len(calls) == 3
    assert make(tmp_path, config={"k": 2}).run(work)["skipped"] is False and len(calls) == 4   # config
    assert make(tmp_path, config={"k": 2}, upstream={"up": "def"}).run(work)["skipped"] is False  # upstream
    assert len(calls) == 5


def test_a_crash_leaves_no_marker(tmp_path):
    stage = make(tmp_path)

    def crash():
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "out" / "half.txt").write_text("half")
        raise RuntimeError("killed mid-stage")

    try:
        stage.run(crash)
    except RuntimeError:
        pass
    assert not stage.marker.exists() and stage.completed() is None


def test_temporary_and_hidden_files_do_not_count(tmp_path):
    stage = make(tmp_path)

    def work():
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "out" / "a.txt").write_text("x")
        return {}

    stage.run(work)
    (tmp_path / "out" / "b.json.tmp").write_text("partial")
    (tmp_path / "out" / ".hidden").write_text("lock")
    assert make(tmp_path).completed() is not None
