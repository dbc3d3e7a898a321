"""`litflow ingest` contacts no host but the URL list's: every name lookup and every connection
made by the command and by every process it starts is recorded by a Python audit hook
(``socket.getaddrinfo`` and ``socket.connect`` events, installed through ``sitecustomize``,
which spawned img2dataset workers import too) and refused unless it goes to the list's server.

``NO_ALBUMENTATIONS_UPDATE`` is removed from the command's environment: litflow must set it
itself before albumentations is imported, or albumentations asks PyPI for its latest version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_ingest import write_list

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

SITECUSTOMIZE = '''
import os, sys, json
_LOG = os.environ["LITFLOW_NET_LOG"]
_ALLOWED = os.environ["LITFLOW_NET_ALLOWED"]

def _record(kind, target):
    with open(_LOG, "a") as log:
        log.write(json.dumps({"pid": os.getpid(), "kind": kind, "target": target}) + "\\n")

def _hook(event, args):
    if event == "socket.getaddrinfo":
        host = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
        _record("getaddrinfo", host)
        if host != _ALLOWED:
            raise OSError(f"test: name lookup of {host} refused")
    elif event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple):  # AF_UNIX paths (multiprocessing) are not network
            _record("connect", [str(address[0]), int(address[1])])
            if str(address[0]) != _ALLOWED:
                raise OSError(f"test: connection to {address} refused")

sys.addaudithook(_hook)
'''


def test_ingest_makes_no_request_but_to_the_lists_hosts(hostile_site, tmp_path):
    rows, base_url = hostile_site
    # the static site's rows (its server) and the rows refused before any request
    chosen = [r for r in rows if r.url.startswith(base_url) or "127.0.0.1" not in r.url]
    url_list = write_list(chosen, tmp_path / "urls.parquet")
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "net.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    env.update(PYTHONPATH=os.pathsep.join([str(hook_dir), str(REPO)]), LITFLOW_NET_LOG=str(log),
               LITFLOW_NET_ALLOWED="127.0.0.1")
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "ingest", str(url_list), str(tmp_path / "out"), "--allow", "127.0.0.1",
         "--processes", "2", "--threads", "4", "--samples-per-shard", "10", "--timeout", "5"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in log.read_text().splitlines()]
    port = int(base_url.rsplit(":", 1)[1])
    connects = [e for e in events if e["kind"] == "connect"]
    lookups = {e["target"] for e in events if e["kind"] == "getaddrinfo"}
    assert len({e["pid"] for e in connects}) >= 2  # the downloads ran in the worker processes, and were seen there
    assert {tuple(e["target"]) for e in connects} == {("127.0.0.1", port)}
    assert lookups <= {"127.0.0.1"}, lookups
    report = json.loads((tmp_path / "out" / "ingest.json").read_text())
    assert report["rows_in"] == len(chosen)
    assert report["downloaded"] == sum(r.expect == "downloaded" for r in chosen)
