"""Every subcommand has a useful --help, and the console script is installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import build_parser

LITFLOW = Path(sys.executable).parent / "litflow"


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], ["ingest", "demo-data", "serve"]),
        (["ingest"], ["--distributor", "--spark-master", "--allow", "--max-pixels", "ingest.json"]),
        (["demo-data", "fetch"], ["openclipart", "npm", "--per-source"]),
        (["demo-data", "serve"], ["--port"]),
        (["serve"], ["deployments"]),
    ],
)
def test_help(argv, expected):
    done = subprocess.run([str(LITFLOW), *argv, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for word in expected:
        assert word in done.stdout


def test_unknown_distributor_is_refused():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ingest", "a.csv", "out", "--distributor", "ray"])
