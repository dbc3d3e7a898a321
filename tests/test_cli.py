"""Every subcommand, found by walking the parser, answers --help through the installed console
script; --help stays fast because it imports none of the heavy libraries."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import build_parser

LITFLOW = Path(sys.executable).parent / "litflow"
HEAVY = ("torch", "apache_beam", "prefect", "pyspark", "img2dataset", "transformers", "pandas")


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path (``()``, ``("dedup",)``, ``("dedup", "index")``, ...) under the parser."""
    found = [path]
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, path + (name,))
    return found


COMMANDS = _commands(build_parser())


def test_the_walk_finds_every_stage():
    leaves = {" ".join(c) for c in COMMANDS}
    assert {"ingest", "curate", "dedup index", "dedup report", "dedup flag", "embed", "train", "evaluate",
            "demo-data fetch", "demo-data serve", "serve"} <= leaves


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "litflow")
def test_help(command):
    done = subprocess.run([str(LITFLOW), *command, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {' '.join(('litflow',) + command)}"), done.stdout[:200]
    parser = build_parser()
    for name in command:  # each option the parser declares is documented in the help text
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    for action in parser._actions:
        for flag in action.option_strings:
            assert flag in done.stdout, f"{flag} missing from `litflow {' '.join(command)} --help`"


def test_help_imports_no_heavy_library():
    code = ("import sys\nfrom flows.cli import build_parser\n"
            "try:\n    build_parser().parse_args(['train', '--help'])\nexcept SystemExit:\n    pass\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ")
    assert done.stderr.strip() == "", f"--help imported {done.stderr.strip()}"


def test_unknown_distributor_is_refused():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ingest", "a.csv", "out", "--distributor", "ray"])
