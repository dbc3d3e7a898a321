"""The build-corpus deployment, served and run through a real Prefect server."""

from __future__ import annotations

import json

import pytest

from infra.prefect.local import LocalPrefect, StackError
from tests.conftest import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory, demo_data):
    root = tmp_path_factory.mktemp("prefect")
    stack = LocalPrefect(state_dir=root / "run", home=root / "home", port=free_port())
    try:
        stack.start_server()
        stack.start_serve()
        yield stack
    finally:
        stack.stop()


def test_demo_deployment_runs_to_completion(stack, tmp_path):
    out = tmp_path / "corpus"
    code = stack.run_deployment("build-corpus/demo", {"demo_per_source": 15, "output": str(out)}, timeout_s=600)
    assert code == 0
    report = json.loads((out / "ingest" / "ingest.json").read_text())
    assert report["rows_in"] == 30
    assert report["rows_in"] == report["downloaded"] + sum(report["failed"].values())
    assert (out / "ingest" / "shards" / "00000.tar").stat().st_size > 0


def test_a_failing_run_exits_non_zero(stack, tmp_path):
    code = stack.run_deployment("build-corpus/demo", {"url_list": str(tmp_path / "missing.parquet"),
                                                      "output": str(tmp_path / "x")}, timeout_s=300)
    assert code != 0


def test_second_server_in_the_same_state_folder_is_refused(stack):
    twin = LocalPrefect(state_dir=stack.state_dir, home=stack.home, port=free_port())
    with pytest.raises(StackError, match="already running"):
        twin.start_server()


def test_port_in_use_is_reported(stack, tmp_path):
    other = LocalPrefect(state_dir=tmp_path / "run", home=tmp_path / "home", port=stack.port)
    with pytest.raises(StackError, match=f"port {stack.port}.*in use"):
        other.start_server()
