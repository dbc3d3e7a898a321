"""The layer order (flows > training > curation > dedup > infra) holds: import-linter's contracts in
pyproject.toml pass on the code, and the same contracts fail on a copy with one back-arrow added."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("flows", "training", "curation", "dedup", "infra")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(where: Path) -> subprocess.CompletedProcess:
    # import-linter imports nothing: it parses the sources found on the path, so this is quick
    return subprocess.run([str(LINT_IMPORTS), "--config", str(where / "pyproject.toml"), "--no-cache"],
                          cwd=where, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(where), "PATH": "/usr/bin:/bin"})


def _copy_project(dest: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_the_layer_contracts_hold():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, back_arrow, contract", [
    ("dedup/phash.py", "import curation.shards", "flows > training > curation > dedup > infra"),
    ("infra/paths.py", "from flows import terminal", "flows > training > curation > dedup > infra"),
    # hidden inside a function, as the old cycles were: still found
    ("curation/text.py", "def _late():\n    from training import train", "flows > training > curation > dedup > infra"),
    ("training/data.py", "import prefect", "only flows knows Prefect"),
])
def test_a_back_arrow_breaks_the_contract(tmp_path, module, back_arrow, contract):
    copy = _copy_project(tmp_path)
    with open(copy / module, "a", encoding="utf-8") as f:
        f.write("\n\n" + back_arrow + "\n")
    result = _lint(copy)
    assert result.returncode != 0
    assert f"{contract} BROKEN" in result.stdout, result.stdout
